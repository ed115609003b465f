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
