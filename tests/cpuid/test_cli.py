"""``viridian cpuid``: JSON shape, human table, one-line errors with exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from viridian.cli.main import main

LEAF_KEYS = [f"0x{leaf:08x}" for leaf in range(0x40000000, 0x4000000B)]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, int]]:
    assert main(["cpuid", *args, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)  # nothing but the JSON document on stdout
    assert isinstance(data, dict)
    return data


def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "--hv", "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff")
    assert list(data) == LEAF_KEYS
    for regs in data.values():
        assert list(regs) == ["eax", "ebx", "ecx", "edx"]
        assert all(type(v) is int for v in regs.values())
    assert data["0x40000003"] == {"eax": 0x30, "ebx": 0, "ecx": 0, "edx": 0x8}
    assert data["0x40000004"] == {"eax": 0x28, "ebx": 0x1FFF, "ecx": 0, "edx": 0}


def test_json_every_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xml = tmp_path / "win.xml"
    xml.write_text("<domain type='kvm'><features><hyperv><relaxed state='on'/></hyperv></features></domain>")
    assert run_json(capsys, "--libvirt", str(xml))["0x40000004"]["eax"] == 0x20
    assert run_json(capsys, "--preset", "none")["0x40000001"]["eax"] == 0
    assert run_json(capsys, "--xen", "base")["0x40000000"]["eax"] == 0x40000006


def test_guest_os_id_feeds_xen_leaves(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "--xen", "base")["0x40000004"]["eax"] == 0
    with_id = run_json(capsys, "--xen", "base", "--guest-os-id", "0x0001040A00004F7C")
    assert with_id["0x40000004"] == {"eax": 0x28, "ebx": 2047, "ecx": 0, "edx": 0}
    assert with_id["0x40000002"]["eax"] == 0x1772


def test_human_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpuid", "--preset", "recommended"]) == 0
    out = capsys.readouterr().out
    assert "40000000" in out and "4000000a" in out
    assert "Microsoft Hv" in out and "Hv#1" in out
    assert "relaxed_timing" in out
    assert "00002e7f" in out


@pytest.mark.parametrize(("args", "needle"), [
    (["--hv", "hv-bogus"], "unknown Hyper-V flag 'hv-bogus'"),
    (["--hv", "hv-stimer"], "hv-stimer requires"),
    (["--xen", "freq"], "requires group 'base'"),
    (["--preset", "fast"], "unknown preset 'fast'"),
    ([], "exactly one of"),
    (["--hv", "hv-relaxed", "--preset", "all"], "exactly one of"),
    (["--libvirt", "/nonexistent/dir/win.xml"], "/nonexistent/dir/win.xml"),
    (["--hv", "hv-relaxed", "--guest-os-id", "windows"], "--guest-os-id"),
])
def test_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    assert main(["cpuid", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(r"viridian: error: [^\n]+\n", err)
    assert needle in err


def test_bad_flag_with_json_prints_nothing_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpuid", "--hv", "hv-relaxd", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "did you mean hv-relaxed?" in err


WIDE_CONFIGS = [
    ["--preset", "all"], ["--preset", "recommended"], ["--preset", "xen-defaults"], ["--preset", "none"],
    ["--hv", "hv-passthrough,hv-no-nonarch-coresharing=on"],
    ["--xen", "all,guest_idle", "--guest-os-id", "0x0001040A00004F7C"],
    ["--hv", "hv-relaxed,hv-vendor-id=WWWWWWWWWWWW,hv-version-id-build=0xffffffff,hv-version-id-major=0xffff,"
             "hv-version-id-minor=0xffff,hv-version-id-spack=0xffffffff,hv-version-id-sbranch=0xff,"
             "hv-version-id-snumber=0xffffff,x-hv-max-vps=0xffffffff,x-hv-max-lps=0xffffffff"],
]


@pytest.mark.parametrize("args", WIDE_CONFIGS, ids=lambda a: " ".join(a)[:40])
def test_human_output_fits_80_columns(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["cpuid", *args]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert max(len(line) for line in out.splitlines()) <= 80


def test_human_output_one_bit_name_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpuid", "--preset", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if re.fullmatch(r"4000000[0-9a]( {2}[0-9a-f]{8}){4}", line)]
    assert [line[:8] for line in table] == [k[2:] for k in LEAF_KEYS]  # every leaf, raw, in order
    decoded = lines[lines.index("decoded:") + 1:]
    names = [line.split()[-1] for line in decoded]
    for name in ("relaxed_timing", "ex_processor_masks", "direct_synthetic_timers", "post_messages",
                 "extended_gva_ranges_for_flush_va_list", "enlightened_msr_bitmap"):
        assert name in names  # alone at the end of its own line
    edx = next(i for i, line in enumerate(decoded) if line.startswith(" " * 10 + "edx"))
    assert decoded[edx].split() == ["edx", "cpu_dynamic_partitioning"]


def test_human_output_prints_vendor_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    # no console markup interpretation of guest-visible strings
    assert main(["cpuid", "--hv", "hv-relaxed,hv-vendor-id=[red]x[/]"]) == 0
    assert "vendor '[red]x[/]'" in capsys.readouterr().out


def test_human_output_without_enlightenments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpuid", "--preset", "none"]) == 0
    out = capsys.readouterr().out
    assert "no Hyper-V interface offered" in out
    assert "40000001  00000000  00000000  00000000  00000000" in out
