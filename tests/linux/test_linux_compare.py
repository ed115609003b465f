"""``viridian compare`` on a Linux kernel: IMAGE detected as a bzImage / vmlinux and booted as by ``viridian
boot`` under both offers (Debian's 6.1 cloud kernel, first ~0.2 s of guest time; skipped when it cannot be
fetched), plus the detection and the option checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from viridian.cli.main import main
from viridian.errors import UserError
from viridian.machine.linux_machine import is_linux_image

EARLY_TICKS = 450_000_000


def _elf(notes: bytes) -> bytes:
    """An x86-64 ELF64 with one PT_LOAD and one PT_NOTE holding ``notes``."""
    eh = bytearray(64)
    eh[:4], eh[4], eh[5] = b"\x7fELF", 2, 1
    struct.pack_into("<HHIQQQIHHHHHH", eh, 16, 2, 0x3E, 1, 0x100000, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    data_at = 64 + 2 * 56
    load = struct.pack("<IIQQQQQQ", 1, 5, data_at, 0x100000, 0x100000, 1, 1, 1)
    note = struct.pack("<IIQQQQQQ", 4, 4, data_at + 1, 0, 0, len(notes), len(notes), 4)
    return bytes(eh) + load + note + b"\xf4" + notes


def _note(name: bytes, desc: bytes = b"\0" * 4, kind: int = 0x100) -> bytes:
    n = name + b"\0"
    return (struct.pack("<III", len(n), len(desc), kind) + n + b"\0" * (-len(n) % 4) + desc
            + b"\0" * (-len(desc) % 4))


def test_detection(tmp_path: Path) -> None:
    bz = bytearray(0x1000)
    struct.pack_into("<H", bz, 0x1FE, 0xAA55)
    bz[0x202:0x206] = b"HdrS"
    cases = {"bzImage": bytes(bz), "vmlinux": _elf(_note(b"GNU", b"\1" * 20, 3) + _note(b"Linux")),
             "guest.elf": _elf(_note(b"GNU", b"\1" * 20, 3)), "flat.bin": b"\xf4" * 64, "empty": b""}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    assert [n for n in cases if is_linux_image(tmp_path / n)] == ["bzImage", "vmlinux"]
    with pytest.raises(UserError, match="cannot read"):
        is_linux_image(tmp_path / "missing")


def test_linux_options_need_a_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\xf4" * 64)
    assert main(["compare", str(flat), "--a", "none", "--b", "recommended", "--initrd", str(flat)]) == 2
    assert "not a Linux kernel" in capsys.readouterr().err


def test_guest_cmdline_is_not_a_kernel_command_line(kernel: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", kernel, "--a", "none", "--b", "recommended", "--cmdline", "ticks=1"]) == 2
    assert "--append" in capsys.readouterr().err


def test_compare_boots_the_kernel_under_both_offers(kernel: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", kernel, "--a", "none", "--b", "recommended", "--max-ticks", str(EARLY_TICKS)]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "linux" and out["cmdline"].startswith("console=ttyS0")
    a, b = out["a"], out["b"]
    for run in (a, b):
        assert run["result"]["status"] == "timeout"
        assert "Linux version 6.1" in run["serial"], run["serial"][-1000:]
        assert run["exits"]["by_reason"]["cpuid"] > 0 and run["exits"]["by_reason"]["io"] > 0
    assert "Hypervisor detected: Microsoft Hyper-V" in b["serial"]
    assert "Microsoft Hyper-V" not in a["serial"]
    synthetic = [{k for k in r["exits"]["by_msr"] if 0x4000_0000 <= int(k, 16) < 0x4000_1000} for r in (a, b)]
    assert not synthetic[0] and "0x40000022" in synthetic[1]  # B: the kernel reads HV_X64_MSR_TSC_FREQUENCY
    assert any(r["figure"] == "  cpuid" for r in out["rows"])


def test_compare_text_table(kernel: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", kernel, "--a", "none", "--b", "linux", "--max-ticks", "200000000"]) == 0
    text = capsys.readouterr().out
    assert "== compare: A = none, B = linux" in text
    for row in ("result", "exits (total)", "  cpuid", "  io", "virtual time (ms)", "negotiation: used in both"):
        assert row in text, text
