"""pytest plugin (entry point ``pytest11: viridian``): guest-level tests in a few lines.

Fixtures:
  ``viridian_run(image, offer="recommended", vcpus=1, cmdline="", **machine_options) -> GuestRun``
      run an image (path, or the name of a fixture guest such as "win7") under an offer (a preset,
      ``hv:FLAGS``, ``xen:GROUPS``, ``libvirt:FILE``, ``...@CPUID-EDIT``); the result has ``status``, ``code``,
      ``serial``, ``stats`` (the stats JSON of ``viridian run``) and ``negotiation``.
  ``viridian_asm(source, name="guest") -> Path``
      assemble a GNU-as guest (``#include "guest.inc"`` works: the fixture runtime) into an ELF64 image.
  ``viridian_offer``
      the offer of the current test (default "recommended"); with ``@pytest.mark.viridian_offers(...)``
      the test runs once per offer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class GuestRun:
    """What one run of a guest gave."""

    status: str
    code: int | None
    detail: str
    serial: str
    stats: dict[str, Any]
    machine: Any

    @property
    def negotiation(self) -> dict[str, Any]:
        return dict(self.stats["negotiation"])

    @property
    def ok(self) -> bool:
        return (self.status, self.code) == ("exit", 0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "viridian_offers(*offers): run the test once per offer; it gets the "
                            "offer through the viridian_offer fixture")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("viridian_offers")
    if marker is not None and "viridian_offer" in metafunc.fixturenames:
        metafunc.parametrize("viridian_offer", list(marker.args), ids=[str(a) for a in marker.args])


@pytest.fixture
def viridian_offer() -> str:
    return "recommended"


def _image(image: str | Path) -> Path:
    """A path, or the name of a shipped guest ("win7", "lab", ...: ``viridian guests``)."""
    from viridian.errors import UserError
    from viridian.guests import guest_path

    p = Path(image)
    if p.exists():
        return p
    try:
        return guest_path(str(image))
    except UserError as exc:
        raise FileNotFoundError(f"no guest image {image!r}: neither a path nor a shipped guest ({exc})") from None


@pytest.fixture
def viridian_run() -> Iterator[Callable[..., GuestRun]]:
    built: list[Any] = []  # closed when the test ends (GuestRun.machine stays usable inside the test)

    def run(image: str | Path, offer: str = "recommended", vcpus: int = 1, cmdline: str = "",
            max_ticks: int = 4_000_000_000, **machine_options: Any) -> GuestRun:
        from viridian.config.spec import parse_config
        from viridian.machine.loader import load_image
        from viridian.machine.machine import Machine
        from viridian.report.run import stats_json

        m = Machine(parse_config(offer), load_image(_image(image)), vcpus=vcpus, cmdline=cmdline,
                    max_ticks=max_ticks, **machine_options)
        built.append(m)
        res = m.run()
        return GuestRun(res.status, res.code, res.detail, m.ports.serial.text(), stats_json(m), m)

    yield run
    for m in built:
        m.close()


@pytest.fixture
def viridian_asm(tmp_path: Path) -> Callable[..., Path]:
    def build(source: str, name: str = "guest") -> Path:
        from viridian.guests import runtime_dir

        src, out = tmp_path / f"{name}.S", tmp_path / f"{name}.elf"
        src.write_text(source, encoding="utf-8")
        rt = runtime_dir()
        cmd = ["gcc", "-m64", "-ffreestanding", "-fno-pic", "-nostdinc", f"-I{rt / 'include'}",
               "-nostdlib", "-static", "-no-pie", f"-Wl,-T,{rt / 'guest.ld'}",
               "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack", str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"assembling {name}.S failed:\n{proc.stderr}")
        return out

    return build
