"""Where the shipped guests and the guest runtime are: package data of an installed viridian, or the
source tree's fixtures/ when running from a checkout.

A wheel (``pip install .``, ``pip wheel .``) carries the built guests in ``viridian/_data/guests`` and the
assembler runtime (guest.inc, guest.ld) in ``viridian/_data/runtime``; setup.py's build step runs
``make -C fixtures`` and copies them there. From a checkout (editable install) the same names resolve to
``fixtures/build`` and ``fixtures/guests``, built with ``make -C fixtures`` when missing.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

from viridian.errors import UserError

SOURCE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GUEST_SUFFIXES = (".elf", ".cpio")  # what a guest listing shows (flat .bin twins are shipped but not listed)
IMAGE_SUFFIXES = (*GUEST_SUFFIXES, ".bin")


def _package_data() -> Path | None:
    data = resources.files("viridian") / "_data"
    path = Path(str(data))
    return path if path.is_dir() else None


def from_source_tree() -> bool:
    """True when viridian runs from a checkout that has the fixture sources (and no packaged data)."""
    return _package_data() is None and (SOURCE_FIXTURES / "Makefile").is_file()


def build_fixtures() -> None:
    """``make -C fixtures`` in a checkout (a no-op when everything is up to date)."""
    try:
        proc = subprocess.run(["make", "-s", "-C", str(SOURCE_FIXTURES)], capture_output=True, text=True,
                              check=False)
    except OSError as exc:
        raise UserError(f"building the fixture guests needs make, gcc and binutils: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"building the fixture guests (make -C {SOURCE_FIXTURES}) failed: {tail}")


def guest_dir() -> Path:
    """The directory holding the built guests (conformance.elf, lab.elf, win7.elf, ..., initramfs.cpio)."""
    data = _package_data()
    if data is not None:
        return data / "guests"
    return SOURCE_FIXTURES / "build"


def runtime_dir() -> Path:
    """The directory holding ``include/guest.inc`` and ``guest.ld`` (for assembling test guests)."""
    data = _package_data()
    if data is not None:
        return data / "runtime"
    return SOURCE_FIXTURES / "guests"


def guest_path(name: str) -> Path:
    """A shipped guest by name ("win7", "lab", "conformance", "initramfs.cpio"); built in a checkout when
    missing. A one-line UserError when it is not there."""
    file = name if Path(name).suffix in IMAGE_SUFFIXES else f"{name}.elf"
    if "/" in file or file.startswith("."):
        raise UserError(f"{name!r} is not a guest name (see 'viridian guests')")
    path = guest_dir() / file
    if not path.is_file() and from_source_tree():
        build_fixtures()
    if not path.is_file():
        hint = ("build the guests with 'make -C fixtures' (gcc + binutils)" if from_source_tree()
                else "see 'viridian guests' for what this installation ships")
        raise UserError(f"no shipped guest {name!r} ({path} is missing): {hint}")
    return path


def is_guest_name(text: str) -> bool:
    """A bare word that names a shipped guest (no directory part, no file in the working directory)."""
    if not text or "/" in text or Path(text).exists():
        return False
    file = text if Path(text).suffix in IMAGE_SUFFIXES else f"{text}.elf"
    return (guest_dir() / file).is_file()


def shipped_guests() -> list[Path]:
    """Every shipped guest image, sorted by name (building them first in a checkout)."""
    if from_source_tree() and not (SOURCE_FIXTURES / "build" / "conformance.elf").is_file():
        build_fixtures()
    root = guest_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix in GUEST_SUFFIXES)
