"""COM1's hot accesses answered natively (csrc vn_in/vn_out, vcpu_io.py): the same exits, serial output and
clocks as the Python port bus (which --trace uses), and DLAB respected."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.trace import Tracer
from viridian.report.run import stats_json


def _run(path: Path, vcpus: int, traced: bool) -> tuple[Machine, dict[str, Any]]:
    kw: dict[str, Any] = {"tracer": Tracer(io.StringIO(), owned=False)} if traced else {}
    m = Machine(load_config(preset="recommended"), load_image(path), vcpus=vcpus, max_ticks=4_000_000_000, **kw)
    m.run()
    return m, stats_json(m)


@pytest.mark.parametrize("guest", ["hello.elf", "win7.elf", "win8.elf", "apic_timer.elf", "exceptions.elf"])
def test_native_console_matches_the_port_bus(guests: Path, guest: str) -> None:
    native, s = _run(guests / guest, 2, traced=False)
    python, t = _run(guests / guest, 2, traced=True)
    assert s["exits"]["by_port"].get("0x03f8", 0) > 0
    for key in ("result", "exits", "serial", "time"):
        assert s[key] == t[key], key
    assert [v.native.bytes for v in native.vcpus] == [v.native.bytes for v in python.vcpus]


def _out(port: int, value: int) -> bytes:
    return bytes([0x66, 0xBA]) + port.to_bytes(2, "little") + bytes([0xB0, value, 0xEE])  # mov dx; mov al; out


def test_thr_with_dlab_set_writes_the_divisor(tmp_path: Path) -> None:
    code = (_out(0x3F8, ord("a")) + _out(0x3FB, 0x83) + _out(0x3F8, 0x0C) + _out(0x3F9, 0x00)
            + _out(0x3FB, 0x03) + _out(0x3F8, ord("b"))
            + bytes([0x66, 0xBA, 0xFD, 0x03, 0xEC])  # mov dx, 0x3fd; in al, dx
            + bytes([0x88, 0xC1])  # mov cl, al
            + _out(0x3F8, ord("c")) + bytes([0x88, 0xC8, 0x66, 0xBA, 0xF4, 0x00, 0xEE]))  # out 0xf4, LSR
    image = tmp_path / "dlab.bin"
    image.write_bytes(code)
    m = Machine(load_config(preset="none"), load_image(image), max_ticks=100_000_000)
    result = m.run()
    assert (result.status, result.code) == ("exit", 0x60)  # LSR: THR empty, transmitter empty
    assert m.ports.serial.text() == "abc" and m.ports.serial.divisor == 0x0C
    st = m.total_stats()
    assert st.ports[0x3F8] == 4 and st.ports[0x3FD] == 1 and st.by_reason["io"] == 9
