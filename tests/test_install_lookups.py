"""Shipped guests by name (viridian.guests: fixtures/ in a checkout, package data in a wheel), ``viridian
guests``, and the vCPU hot path's build problems as one-line errors (compiler missing or failing, CC with
flags, an unwritable cache). The installed case is tests/test_wheel_install.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from viridian.errors import UserError
from viridian.guests import guest_path, is_guest_name, runtime_dir
from viridian.machine.loader import load_image
from viridian.machine.unicorn import native

CLI = [sys.executable, "-m", "viridian"]


@pytest.mark.parametrize(("name", "file"), [("win7", "win7.elf"), ("lab", "lab.elf"), ("conformance", "conformance.elf"),
                                            ("initramfs.cpio", "initramfs.cpio"), ("hello.bin", "hello.bin")])
def test_guest_by_name(name: str, file: str) -> None:
    path = guest_path(name)
    assert path.name == file and path.is_file()
    assert is_guest_name(name)


@pytest.mark.parametrize(("name", "needle"), [("nosuch", "no shipped guest 'nosuch'"),
                                              ("../win7", "not a guest name"), (".hidden", "not a guest name")])
def test_unknown_guest_is_one_line(name: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle) as info:
        guest_path(name)
    assert "\n" not in str(info.value)
    assert not is_guest_name(name)


def test_runtime_and_image_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (runtime_dir() / "include" / "guest.inc").is_file() and (runtime_dir() / "guest.ld").is_file()
    monkeypatch.chdir(tmp_path)
    assert load_image("win7").path == str(guest_path("win7"))
    (tmp_path / "win7").write_bytes(b"\x90" * 16)  # a file in the working directory wins over the shipped guest
    assert not is_guest_name("win7") and load_image("win7").kind == "flat"


def test_guests_command(tmp_path: Path) -> None:
    res = subprocess.run([*CLI, "guests", "--json"], capture_output=True, text=True, check=True, cwd=tmp_path)
    data = json.loads(res.stdout)
    by_name = {g["name"]: g for g in data["guests"]}
    assert Path(by_name["conformance"]["path"]) == guest_path("conformance")
    assert "initramfs.cpio" in by_name and "win7.bin" not in by_name  # flat twins are not listed
    text = subprocess.run([*CLI, "guests"], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert str(guest_path("lab")) in text and "exit-reduction lab" in text


@pytest.mark.parametrize(("cc", "needle"), [("/nonexistent/clang", "cannot run the C compiler '/nonexistent/clang'"),
                                            ("false", "building the vCPU hot path with 'false' failed"),
                                            ("'unbalanced", "is not a compiler command")])
def test_compiler_problems_are_one_line(tmp_path: Path, cc: str, needle: str) -> None:
    with pytest.raises(UserError) as info:
        native.compile_library(tmp_path / "x.so", cc)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_cc_with_flags_compiles(tmp_path: Path) -> None:
    native.compile_library(tmp_path / "x.so", "gcc -m64")
    assert (tmp_path / "x.so").stat().st_size > 0


@pytest.mark.parametrize(("env", "needle"), [({"CC": "/nonexistent/clang"}, "cannot run the C compiler"),
                                             ({"VIRIDIAN_CACHE": "/dev/null/cache"}, "cannot write the vCPU hot-path")])
def test_cli_build_problem_is_one_line(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    """The default engine falls back to the reference engine with one line; asking for the fast one is exit 2."""
    import os

    full = os.environ | {"VIRIDIAN_CACHE": str(tmp_path / "cache")} | env
    res = subprocess.run([*CLI, "run", "hello", "--quiet"], capture_output=True, text=True, env=full, cwd=tmp_path)
    assert res.returncode == 0 and needle in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert "running the reference engine" in res.stderr
    res = subprocess.run([*CLI, "run", "hello", "--quiet", "--engine", "unicorn"], capture_output=True, text=True,
                         env=full, cwd=tmp_path)
    assert res.returncode == 2 and needle in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
