"""Hostile snapshot files (issue 17 item 1): each is refused by ``viridian resume F`` with one line and exit
status 2, nothing is written, nothing runs (a canary file proves a pickle payload never executed). Files carry
a valid checksum unless the test is about the checksum: the checks behind it are what is tested."""

from __future__ import annotations

import io
import os
import pickle
import zlib
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from tests.machine.snapshot_craft import Parts, boundaries, unpack
from viridian.cli.main import main


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def genuine(guests: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real snapshot of a 2-vCPU guest mid-run (8 MiB of RAM: quick to load)."""
    path = tmp_path_factory.mktemp("snap") / "win8.snap"
    rc, _out, err = cli("run", str(guests / "win8.elf"), "--vcpus", "2", "--mem", "8", "--snapshot-at", "1500000",
                        "--snapshot", str(path), "--quiet")
    assert rc == 0, err
    return path.read_bytes()


def refused(tmp_path: Path, blob: bytes, canary: Path | None = None) -> str:
    """Resume ``blob``: exit 2, one line on stderr, no traceback, no file created, nothing run."""
    snap = tmp_path / "bad.snap"
    snap.write_bytes(blob)
    before = sorted(os.listdir(tmp_path))
    rc, out, err = cli("resume", str(snap))
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("viridian: error: "), err
    assert out == ""
    assert sorted(os.listdir(tmp_path)) == before and snap.read_bytes() == blob
    if canary is not None:
        assert not canary.exists()
    return err


def test_the_genuine_snapshot_resumes(genuine: bytes, tmp_path: Path) -> None:
    (tmp_path / "ok.snap").write_bytes(genuine)
    rc, _out, err = cli("resume", str(tmp_path / "ok.snap"), "--quiet")
    assert rc == 0, err


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def test_an_old_pickle_snapshot_with_a_payload_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = zlib.compress(pickle.dumps({"model": _Payload(f"touch {canary}")}))
    header = b'{"version": 1, "options": {}, "payload_size": %d}' % len(payload)
    blob = b"VIRIDIAN-SNAPSHOT 1\n" + len(header).to_bytes(8, "little") + header + payload
    err = refused(tmp_path, blob, canary)
    assert "version 1" in err and "pickle" in err


def _set(tree: Any, path: str, value: Any) -> Any:
    *head, last = path.split(".")
    node = tree
    for key in head:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is _DROP:
        del node[last]
    else:
        node[last] = value
    return tree


_DROP = object()
MANIFEST_EDITS = [
    ("options.pcpus", -3), ("options.vcpus", 10**9), ("options.vcpus", "1"), ("options.vcpus", True),
    ("options.mem", 10**6), ("ram_size", 1 << 40), ("options.max_ticks", -1), ("options.fast", "yes"),
    ("options.quantum", 0), ("options.ap_start", "bios"), ("options.cmdline", "x" * 10_000),
    ("options.cpuid", ["x"] * 1000), ("options.libvirt", "/dev/zero"), ("image.path", "/dev/zero"),
    ("image.sha256", "0" * 64), ("image.sha256", 5), ("version", 1), ("format", "qemu"), ("time.tsc", -5),
    ("time.requested", 1.5), ("engine", None), ("board", "isa"), ("options.vcpus", 1), ("options", None),
    ("options.vcpus", _DROP),
]


@pytest.mark.parametrize(("path", "value"), MANIFEST_EDITS, ids=[f"{p}={str(v)[:12]}" for p, v in MANIFEST_EDITS])
def test_manifest_edits_are_refused(genuine: bytes, tmp_path: Path, path: str, value: Any) -> None:
    parts = unpack(genuine)
    _set(parts.manifest, path, value)
    refused(tmp_path, parts.pack())


def _table(parts: Parts) -> list[dict[str, Any]]:
    return [{"name": n, "length": len(b), "size": len(zlib.decompress(b))} for n, b in parts.raw.items()]


TABLE_EDITS: list[tuple[str, Callable[[list[dict[str, Any]]], Any]]] = [
    ("negative length", lambda t: t[1].update(length=-1)),
    ("huge state size", lambda t: t[2].update(size=1 << 40)),
    ("duplicate name", lambda t: t[2].update(name=t[1]["name"])),
    ("unknown field", lambda t: t[0].update(extra=1)),
    ("string size", lambda t: t[0].update(size="8388608")),
    ("lengths shifted", lambda t: (t[1].update(length=t[1]["length"] + 1), t[2].update(length=t[2]["length"] - 1))),
    ("no ram", lambda t: t[0].update(name="ramm")),
    ("dotted name", lambda t: t[3].update(name="os.system")),
    ("empty", lambda t: t.clear()),
]


@pytest.mark.parametrize(("name", "edit"), TABLE_EDITS, ids=[n for n, _e in TABLE_EDITS])
def test_section_table_edits_are_refused(genuine: bytes, tmp_path: Path, name: str,
                                         edit: Callable[[list[dict[str, Any]]], Any]) -> None:
    parts = unpack(genuine)
    table = _table(parts)
    edit(table)
    refused(tmp_path, parts.pack(table))


def _deep(n: int) -> str:
    return "[" * n + "]" * n


STATE_EDITS = [  # (section, path, value); path "" replaces the whole section
    ("vcpus", "0.cpu.rip", 0x0000_8000_0000_0000), ("vcpus", "0.cpu.cr.cr0", 1 << 40),
    ("vcpus", "0.cpu.cr.cr3", 1 << 45), ("vcpus", "0.cpu.rflags", 0), ("vcpus", "0.cpu.segs.fs", 0x1238),
    ("vcpus", "0.cpu.segs.cs", 0x10000), ("vcpus", "0.cpu.msrs.efer", 1 << 20),
    ("vcpus", "0.cpu.msrs.lstar", 1 << 63), ("vcpus", "0.cpu.gdtr", [0, 1 << 20]), ("vcpus", "0.cpu.ymm.3", "zz"),
    ("vcpus", "0.cpu.x87.fp.0", [1, 1 << 20]), ("vcpus", "0.cpu.dr.dr7", 1 << 40), ("vcpus", "0.cpu.mxcsr", 1 << 16),
    ("vcpus", "0.sipi_vector", 300), ("vcpus", "1.halted", 1), ("vcpus", "0.native.bytes", -1),
    ("vcpus", "0.multiboot_entry", [1 << 40, 0]), ("vcpus", "0.stats.by_reason", [["hlt", -1]]),
    ("vcpus", "0.cpu", None), ("vcpus", "", []),
    ("apics", "apics.0.irr", "xyz"), ("apics", "apics.1.lvt.0", [0x320, 1 << 40]),
    ("apics", "apics.0.xapic_id", 256), ("apics", "ipis_sent", [[7, 1]]), ("apics", "apics.0.timer.mode", 9),
    ("partition", "hypercall_page_gpa", 0x1001), ("partition", "hypercall_page_gpa", 1 << 40),
    ("partition", "vps.0.synic.sints", [0] * 15), ("partition", "vps.0.synic.queues.0.items", [[1, "", 0]] * 100),
    ("partition", "vps.0.synic.queues.0.items", [[0, "", 0]]), ("partition", "vps.0.synic.timers.0.deadline", "x"),
    ("partition", "vps.1.assist.candidate", 256), ("partition", "time.page_gpa", 0x123),
    ("partition", "crash_params", None),
    ("arch", "0.pat", 0x0202020202020202), ("arch", "1.apic_base_address", 0xFEE00001),
    ("machine", "clock.tsc_hz", 0), ("machine", "T", 1 << 62), ("machine", "negotiation.first", [["cpuid", 1, 99, 0, "ok"]]),
    ("machine", "negotiation.first", [["pickle", 1, 0, 0, "ok"]]), ("machine", "ports.unclaimed", [[1 << 20, 1]]),
    ("devices", "serial16550@0x3f8", _DROP), ("devices", "pit@0x40", {}), ("devices", "", "x"),
]


@pytest.mark.parametrize(("section", "path", "value"), STATE_EDITS,
                         ids=[f"{s}.{p}={str(v)[:10]}" for s, p, v in STATE_EDITS])
def test_valid_checksum_state_edits_are_refused(genuine: bytes, tmp_path: Path, section: str, path: str,
                                                value: Any) -> None:
    parts = unpack(genuine)
    parts.set_state(section, value if path == "" else _set(parts.state(section), path, value))
    refused(tmp_path, parts.pack())


@pytest.mark.parametrize("garbage", [b"not zlib at all", zlib.compress(b"{not json"), zlib.compress(b"\xff\xfe"),
                                     zlib.compress(_deep(100_000).encode()), zlib.compress(b"1" * 5000)])
def test_valid_checksum_garbage_sections_are_refused(genuine: bytes, tmp_path: Path, garbage: bytes) -> None:
    for name in ("partition", "vcpus", "ram"):
        parts = unpack(genuine)
        parts.raw[name] = garbage
        refused(tmp_path, parts.pack())


def _zero_bomb(mib: int) -> bytes:
    """A deflate stream of ``mib`` MiB of zeros (~1 KiB per MiB: one fully flushed block repeated)."""
    c = zlib.compressobj(9)
    first = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return first + block * (mib - 1)


def test_a_decompression_bomb_as_ram_is_refused(guests: Path, tmp_path: Path) -> None:
    """1 GiB of zeros as the RAM of a 128 MiB machine: declared as 1 GiB (refused before inflating) and
    declared as 128 MiB (inflation stops at the cap)."""
    path = tmp_path / "m128.snap"
    assert cli("run", str(guests / "hello.elf"), "--snapshot-at", "1000", "--snapshot", str(path), "--quiet")[0] == 0
    bomb = _zero_bomb(1024)
    for declared in (1 << 30, 128 << 20):
        parts = unpack(path.read_bytes())
        parts.raw["ram"] = bomb
        parts._sizes["ram"] = declared
        assert "ram" in refused(tmp_path, parts.pack())


def test_truncations_at_every_boundary_are_refused(genuine: bytes, tmp_path: Path) -> None:
    for cut in boundaries(genuine):
        refused(tmp_path, genuine[:cut])
    refused(tmp_path, genuine + b"\0")


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_inputs_that_are_not_regular_files_are_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "x"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    rc, _out, err = cli("resume", "/dev/zero" if kind == "device" else str(target))
    assert rc == 2 and err.count("\n") == 1, err


def test_a_section_of_millions_of_items_is_refused_before_parsing(genuine: bytes, tmp_path: Path) -> None:
    parts = unpack(genuine)
    parts.set_data("vcpus", b"[" + b"0," * 3_000_000 + b"0]")
    assert "items" in refused(tmp_path, parts.pack())


def test_a_named_msr_in_the_negotiation_log_is_refused(genuine: bytes, tmp_path: Path) -> None:
    """Only events are keyed by name; an MSR keyed by a string would break the report after the run."""
    parts = unpack(genuine)
    parts.set_state("machine", _set(parts.state("machine"), "negotiation.first", [["rdmsr", "abc", 0, 0, "ok"]]))
    refused(tmp_path, parts.pack())
