"""Wheel-build step (metadata lives in pyproject.toml): a wheel carries everything a command needs.

build_py also
  * runs ``make -C fixtures`` and copies the built guests (fixtures/build/*.elf, *.bin, initramfs.cpio) into
    ``viridian/_data/guests`` and the assembler runtime (guest.inc, guest.ld) into ``viridian/_data/runtime``
    (viridian.guests finds them with importlib.resources);
  * compiles the vCPU hot path (viridian/machine/unicorn/csrc) into ``viridian/machine/unicorn/_native`` with the same recipe
    viridian.machine.unicorn.native uses at run time, so an installed viridian needs no compiler.
The wheel is therefore platform-specific. Editable installs skip both: a checkout uses fixtures/ directly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70
except ImportError:  # pragma: no cover - older setuptools with the wheel package
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent
GUEST_GLOBS = ("*.elf", "*.bin", "*.cpio")


class BuildWithGuests(build_py):
    """build_py, plus the built guests, the guest runtime and the compiled hot path as package data."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        pkg = Path(self.build_lib) / "viridian"
        self._guests(pkg / "_data")
        self._native(pkg / "machine" / "unicorn" / "_native")

    def _guests(self, data: Path) -> None:
        fixtures = ROOT / "fixtures"
        proc = subprocess.run(["make", "-s", "-C", str(fixtures)], check=False)
        if proc.returncode != 0:
            raise SystemExit("building the fixture guests (make -C fixtures) failed: gcc and binutils are needed")
        guests = data / "guests"
        shutil.rmtree(guests, ignore_errors=True)
        guests.mkdir(parents=True)
        for pattern in GUEST_GLOBS:
            for f in sorted((fixtures / "build").glob(pattern)):
                shutil.copyfile(f, guests / f.name)
        runtime = data / "runtime"
        (runtime / "include").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixtures / "guests" / "include" / "guest.inc", runtime / "include" / "guest.inc")
        shutil.copyfile(fixtures / "guests" / "guest.ld", runtime / "guest.ld")

    def _native(self, out_dir: Path) -> None:
        sys.path.insert(0, str(ROOT))  # viridian.machine.unicorn.native holds the one compile recipe
        try:
            from viridian.machine.unicorn import native
        finally:
            sys.path.pop(0)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        native.compile_library(out_dir / native.library_name())


class PlatformDistribution(Distribution):
    """The wheel holds a compiled library: a platform wheel, not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tagged py3-none-<platform>: the library is loaded with ctypes and uses no Python ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        plat = super().get_tag()[2]
        return "py3", "none", plat


setup(cmdclass={"build_py": BuildWithGuests, "bdist_wheel": PlatformWheel}, distclass=PlatformDistribution)
