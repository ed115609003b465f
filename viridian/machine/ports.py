"""The port I/O bus and its devices (engine-free): COM1 (16550 subset) and the exit port."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from viridian.state import Fields, counter_items

COM1: Final = 0x3F8
EXIT_PORT: Final = 0xF4
SERIAL_LIMIT: Final = 4 << 20  # bytes of serial output kept (the rest is counted, not stored)


class PortDevice(Protocol):
    def read(self, port: int, size: int) -> int: ...
    def write(self, port: int, size: int, value: int) -> None: ...


@dataclass
class Serial16550:
    """COM1 as far as a polled or simple driver needs: THR/RBR, IER, IIR/FCR, LCR (DLAB), MCR, LSR, MSR, SCR.
    Transmit is instant (LSR THRE|TEMT always set); no receive data, no interrupts."""

    base: int = COM1
    output: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    regs: dict[int, int] = field(default_factory=lambda: {1: 0, 3: 0x03, 4: 0, 7: 0})
    divisor: int = 12
    sink: Callable[[bytes], None] | None = field(default=None, repr=False, compare=False)  # live output (CLI)

    def read(self, port: int, size: int) -> int:
        off = port - self.base
        dlab = self.regs[3] & 0x80
        if off == 0:
            return self.divisor & 0xFF if dlab else 0
        if off == 1:
            return self.divisor >> 8 if dlab else self.regs[1]
        if off == 2:
            return 0xC1  # IIR: no interrupt pending, FIFOs enabled
        if off == 5:
            return 0x60  # LSR: THR empty, transmitter empty
        if off == 6:
            return 0xB0  # MSR: CTS, DSR, DCD
        return self.regs.get(off, 0)

    def write(self, port: int, size: int, value: int) -> None:
        off, value = port - self.base, value & 0xFF
        dlab = self.regs[3] & 0x80
        if off == 0 and not dlab:
            self.transmit(bytes((value,)))
        elif off == 0:
            self.divisor = (self.divisor & 0xFF00) | value
        elif off == 1 and dlab:
            self.divisor = (self.divisor & 0xFF) | value << 8
        elif off in (1, 3, 4, 7):
            self.regs[off] = value

    def transmit(self, data: bytes) -> None:
        """THR writes (DLAB = 0): bytes of output, kept up to SERIAL_LIMIT."""
        if self.sink is not None:
            self.sink(data)
        room = max(0, SERIAL_LIMIT - len(self.output))
        self.output += data[:room]
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"output": self.output.hex(), "dropped": self.dropped, "divisor": self.divisor,
                "regs": [self.regs[k] for k in (1, 3, 4, 7)]}

    def load_state(self, state: dict[str, Any]) -> None:
        """8-bit IER/LCR/MCR/SCR, a 16-bit divisor latch, at most SERIAL_LIMIT bytes of output."""
        f = Fields(state, f"serial@{self.base:#x}")
        values = (bytearray(f.blob("output", SERIAL_LIMIT)), f.uint("dropped", 0, 1 << 63),
                  f.uint("divisor", 0, 0xFFFF), f.uints("regs", 4, 0, 0xFF))
        self.output, self.dropped, self.divisor, regs = values
        self.regs = dict(zip((1, 3, 4, 7), regs, strict=True))


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
