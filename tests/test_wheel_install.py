"""Issue 20's done-when test: the wheel carries everything a command needs. It builds the wheel from a copy of
the checkout (offline: --no-build-isolation), installs it into a fresh venv (--no-deps, --no-index; the
dependencies come from this venv through a directory of links that leaves viridian out), and from a temporary
directory, with no C compiler and an empty cache (so the wheel's prebuilt hot path is what runs), runs
``viridian guests``, ``viridian run`` on a shipped guest, ``viridian conformance --json``, ``viridian measure
eoi`` and a pytest file using viridian_asm, viridian_run and @pytest.mark.viridian_offers -- with no
repository on the path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
                                     ".ruff_cache", ".pytest_cache", ".hypothesis", "*.pyc")
NOT_DEPS = ("__editable__", "viridian", "_viridian", "msr")  # what of this venv the new one must not see

PLUGIN_TEST = '''
import os
import sys
from pathlib import Path

import pytest

import viridian

REPO = os.environ["VIRIDIAN_TEST_REPO"]

SOURCE = """
#include "guest.inc"
        .text
        .globl guest_main
guest_main:
        PARK_IF_NOT_BSP
        PRINT "hello from an installed viridian\\\\n"
        mov eax, 7
        ret
"""


def test_no_repository_on_the_path():
    inside = [p for p in sys.path if p and (p == REPO or p.startswith(REPO + os.sep))]
    assert not inside and not os.getcwd().startswith(REPO + os.sep)
    assert not Path(viridian.__file__).resolve().is_relative_to(REPO)


def test_asm(viridian_asm, viridian_run):
    run = viridian_run(viridian_asm(SOURCE, name="hello"), offer="none")
    assert (run.status, run.code) == ("exit", 7) and "hello from an installed viridian" in run.serial


@pytest.mark.viridian_offers("none", "recommended", "hv:hv-vpindex,hv-relaxed")
def test_win7_under_offers(viridian_run, viridian_offer):
    run = viridian_run("win7", offer=viridian_offer, vcpus=2)
    assert run.ok, run.serial[-500:]
    assert run.negotiation["guest"]
'''


def _wheel_tools() -> str | None:
    """Why the wheel cannot be built offline here, or None."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        return f"setuptools {setuptools.__version__} < 77 (pip install -e '.[test]')"
    if shutil.which("make") is None or shutil.which("gcc") is None:
        return "make and gcc are needed to build the guests"
    return None


def _deps_dir(into: Path) -> Path:
    """Links to this venv's installed distributions, viridian's own (editable) entries left out."""
    into.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.startswith(NOT_DEPS) or entry.suffix == ".pth":
            continue
        (into / entry.name).symlink_to(entry)
    return into


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_installed_wheel_works_from_anywhere(tmp_path: Path) -> None:
    reason = _wheel_tools()
    if reason:
        pytest.skip(reason)
    src, dist, venv, work = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE, symlinks=True)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(dist)], cwd=src, capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("viridian_tlfs-*.whl")
    assert not wheel.name.endswith("-none-any.whl")  # a platform wheel: it holds the compiled hot path
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("viridian/_data/guests/conformance.elf", "viridian/_data/guests/lab.elf",
                 "viridian/_data/guests/win7.elf", "viridian/_data/guests/initramfs.cpio",
                 "viridian/_data/runtime/include/guest.inc", "viridian/_data/runtime/guest.ld", "viridian/py.typed"):
        assert need in names
    assert any(n.startswith("viridian/machine/unicorn/_native/vcpu_native-") for n in names)
    assert any(n.endswith("licenses/LICENSE") for n in names)

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, check=False)
    assert inst.returncode == 0, inst.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_viridian_test_deps.pth").write_text(f"{_deps_dir(tmp_path / 'deps')}\n")

    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "VIRIDIAN"))}
    env |= {"PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", "VIRIDIAN_CACHE": str(tmp_path / "cache"),
            "CC": str(tmp_path / "no-such-compiler"), "VIRIDIAN_TEST_REPO": str(ROOT)}
    viridian = str(venv / "bin" / "viridian")

    res = _run([viridian, "guests", "--json"], work, env)
    assert res.returncode == 0, res.stderr
    listed = {g["name"]: Path(g["path"]) for g in json.loads(res.stdout)["guests"]}
    assert {"conformance", "lab", "win7", "initramfs.cpio"} <= set(listed)
    assert all(p.is_file() and p.is_relative_to(venv) for p in listed.values())

    res = _run([viridian, "run", "win7", "--vcpus", "2", "--json"], work, env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["result"]["status"] == "exit"

    res = _run([viridian, "conformance", "--json"], work, env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["ok"] is True

    res = _run([viridian, "measure", "eoi"], work, env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "hv-assist" in res.stdout

    (work / "test_installed.py").write_text(PLUGIN_TEST)
    res = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_installed.py"], work, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "5 passed" in res.stdout
    assert not (tmp_path / "cache").exists()  # nothing was compiled at run time
