"""The port I/O bus and its devices (engine-free): COM1 (viridian.devices.uart16550) and the exit port."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final, Protocol

from viridian.devices.uart16550 import COM1, SERIAL_LIMIT, Serial16550
from viridian.state import Fields, counter_items

EXIT_PORT: Final = 0xF4
__all__ = ["COM1", "EXIT_PORT", "SERIAL_LIMIT", "ExitRequested", "PortBus", "PortDevice", "Serial16550"]


class PortDevice(Protocol):
    def read(self, port: int, size: int) -> int: ...
    def write(self, port: int, size: int, value: int) -> None: ...


class ExitRequested(Exception):
    """OUT to the exit port: the run ends with status "exit" and this code."""

    def __init__(self, code: int) -> None:
        self.code = code


class PortBus:
    """Routes IN/OUT to devices; unclaimed ports read all-ones and are counted."""

    def __init__(self) -> None:
        self.serial = Serial16550()
        self.unclaimed: Counter[int] = Counter()
        self._devices: dict[int, PortDevice] = {}
        for p in range(COM1, COM1 + 8):
            self._devices[p] = self.serial
        self.exit_code: int | None = None

    def attach(self, ports: range | tuple[int, ...], device: PortDevice) -> None:
        """Claim ``ports`` for ``device`` (e.g. the CMOS/RTC at 0x70-0x71 on Linux boots)."""
        for p in ports:
            self._devices[p] = device

    def devices(self) -> dict[str, PortDevice]:
        """Every distinct device on the bus, named ``<class>@<first port>`` (snapshots key them so)."""
        out: dict[str, PortDevice] = {}
        seen: set[int] = set()
        for port in sorted(self._devices):
            dev = self._devices[port]
            if id(dev) not in seen:
                seen.add(id(dev))
                out[f"{type(dev).__name__.lower()}@{port:#x}"] = dev
        return out

    def save_state(self) -> dict[str, Any]:
        """The bus's own counters (its devices are saved one by one, see :meth:`devices`)."""
        return {"unclaimed": counter_items(self.unclaimed), "exit_code": self.exit_code}

    def load_state(self, state: dict[str, Any]) -> None:
        f = Fields(state, "ports")
        unclaimed = f.counter("unclaimed", int_keys=True, max_len=0x10000)
        if any(p > 0xFFFF for p in unclaimed):
            raise ValueError("ports.unclaimed: a port beyond 0xffff")
        self.exit_code = f.opt_uint("exit_code", 0, 0xFF)
        self.unclaimed = Counter(unclaimed)

    def device(self, port: int) -> PortDevice | None:
        return self._devices.get(port)

    def read(self, port: int, size: int) -> int:
        dev = self._devices.get(port)
        if dev is None:
            self.unclaimed[port] += 1
            return (1 << (8 * size)) - 1
        return dev.read(port, size) & ((1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        """May raise :class:`ExitRequested` (the exit port)."""
        if port == EXIT_PORT:
            self.exit_code = value & 0xFF
            raise ExitRequested(value & 0xFF)
        dev = self._devices.get(port)
        if dev is None:
            self.unclaimed[port] += 1
            return
        dev.write(port, size, value)
