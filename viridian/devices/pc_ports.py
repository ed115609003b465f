"""Small PC ports, engine-free: System Control Port A (0x92), the POST/delay port (0x80) and an i8042 keyboard
controller (0x60/0x64) with no keyboard or mouse attached -- enough for Linux's probe and its reboot path.

* 0x92 (PIIX "Port 92", QEMU port92.c): reads return the last value; bit 1 = fast A20 (kept, A20 is always
  enabled here); a 0 -> 1 transition of bit 0 resets the machine. Hand-off value 0x02 (A20 on, as SeaBIOS).
* 0x80: Linux's io_delay writes it; writes are absorbed and reads return all ones (QEMU ioport80).
* i8042 (8042 controller as QEMU's pckbd.c models it; commands from the IBM PC/AT technical reference):
  status 0x64 bit 0 OBF, 2 SYS, 3 last write was a command, 4 keyboard not inhibited, 5 OBF from the AUX port;
  commands 0x20 read / 0x60 write the controller configuration byte (CTR: bit 0 keyboard IRQ 1, bit 1 AUX IRQ 12,
  bit 2 SYS, bit 4 keyboard clock off, bit 5 AUX clock off), 0xA7/0xA8 AUX off/on, 0xA9/0xAB port tests (0x00 =
  pass), 0xAA self test (0x55), 0xAD/0xAE keyboard off/on, 0xD0/0xD1 read/write the output port (bit 0 clear =
  reset), 0xD2/0xD3 echo a byte as keyboard/AUX data, 0xD4 write to the mouse (no mouse: dropped), 0xF0-0xFF
  pulse output lines (bit 0 clear pulses reset: Linux's 0xFE reboot). Bytes for the keyboard itself are
  dropped (no keyboard answers, as with nothing plugged in). Output data raises IRQ 1 (or 12 for AUX data)
  while the CTR enables it; reading 0x60 lowers it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from viridian.devices.pc_api import IrqSink, NullIrq

PORT_A = 0x92
POST_PORT = 0x80
I8042_DATA, I8042_CMD = 0x60, 0x64
ST_OBF, ST_SYS, ST_CMD, ST_UNLOCKED, ST_AUX = 0x01, 0x04, 0x08, 0x10, 0x20
CTR_KBD_INT, CTR_AUX_INT, CTR_SYS, CTR_KBD_OFF, CTR_AUX_OFF, CTR_XLATE = 0x01, 0x02, 0x04, 0x10, 0x20, 0x40
CTR_HANDOFF = CTR_KBD_INT | CTR_SYS | CTR_XLATE  # as a BIOS leaves it (scancode translation, IRQ 1 on)

Reset = Callable[[str], None]


class PortA:
    """System Control Port A (0x92)."""

    def __init__(self, on_reset: Reset | None = None) -> None:
        self.on_reset = on_reset
        self.value = 0x02
        self.ports = (PORT_A,)

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        rising = value & 1 and not self.value & 1
        self.value = value & ~1 if rising else value  # the reset bit self-clears after the reset pulse
        if rising and self.on_reset is not None:
            self.on_reset("port 0x92 bit 0 (fast reset)")

    def save_state(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state(self, state: dict[str, Any]) -> None:
        v = state.get("value") if isinstance(state, dict) else None
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
            raise ValueError(f"port 0x92 state: bad value {v!r}")
        self.value = v


class PostPort:
    """Port 0x80: writes absorbed, reads all ones."""

    ports = (POST_PORT,)

    def read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        return None

    def save_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError("port 0x80 state: not a mapping")


class I8042:
    """The keyboard controller with no devices behind it."""

    def __init__(self, irq: IrqSink | None = None, on_reset: Reset | None = None) -> None:
        self.irq, self.on_reset = irq or NullIrq(), on_reset
        self.ctr = CTR_HANDOFF
        self.status = ST_SYS | ST_UNLOCKED
        self.out: list[tuple[int, bool]] = []  # queued output bytes (value, from AUX)
        self.pending = 0  # command awaiting a data byte on 0x60 (0x60, 0xD1-0xD4)
        self.outport = 0x03  # output port: bit 0 system reset (active low), bit 1 A20
        self.lines = (False, False)
        self.ports = (I8042_DATA, I8042_CMD)

    def _push(self, value: int, aux: bool = False) -> None:
        if len(self.out) < 16:
            self.out.append((value & 0xFF, aux))
        self._update()

    def _update(self) -> None:
        self.status &= ~(ST_OBF | ST_AUX)
        kbd = aux = False
        if self.out:
            self.status |= ST_OBF | (ST_AUX if self.out[0][1] else 0)
            kbd, aux = not self.out[0][1] and bool(self.ctr & CTR_KBD_INT), self.out[0][1] and bool(
                self.ctr & CTR_AUX_INT)
        if (kbd, aux) != self.lines:
            if kbd != self.lines[0]:
                self.irq.set_irq(1, kbd)
            if aux != self.lines[1]:
                self.irq.set_irq(12, aux)
            self.lines = (kbd, aux)

    def read(self, port: int, size: int) -> int:
        if port == I8042_CMD:
            return self.status
        if not self.out:
            return 0  # QEMU returns the last byte again; nothing was ever sent here
        value, _aux = self.out.pop(0)
        self._update()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == I8042_CMD:
            self.status |= ST_CMD
            self._command(value)
            return
        self.status &= ~ST_CMD
        cmd, self.pending = self.pending, 0
        if cmd == 0x60:
            self.ctr = value
            self.status = (self.status & ~ST_SYS) | (value & CTR_SYS)
            self._update()
        elif cmd == 0xD1:
            self._write_outport(value)
        elif cmd == 0xD2:
            self._push(value)
        elif cmd == 0xD3:
            self._push(value, aux=True)
        # 0xD4 (to the mouse) and plain data (to the keyboard): no device, dropped

    def _command(self, cmd: int) -> None:
        if cmd == 0x20:
            self._push(self.ctr)
        elif cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending = cmd
        elif cmd in (0xA7, 0xA8):
            self.ctr = self.ctr | CTR_AUX_OFF if cmd == 0xA7 else self.ctr & ~CTR_AUX_OFF
        elif cmd in (0xA9, 0xAB):
            self._push(0x00)
        elif cmd == 0xAA:
            self.status |= ST_SYS
            self._push(0x55)
        elif cmd in (0xAD, 0xAE):
            self.ctr = self.ctr | CTR_KBD_OFF if cmd == 0xAD else self.ctr & ~CTR_KBD_OFF
        elif cmd == 0xD0:
            self._push(self.outport)
        elif cmd >= 0xF0 and not cmd & 1 and self.on_reset is not None:
            self.on_reset(f"i8042 command {cmd:#04x} (pulse reset)")

    def _write_outport(self, value: int) -> None:
        self.outport = value
        if not value & 1 and self.on_reset is not None:
            self.on_reset("i8042 output port bit 0 cleared (reset)")

    def save_state(self) -> dict[str, Any]:
        return {"ctr": self.ctr, "status": self.status, "out": [[v, a] for v, a in self.out],
                "pending": self.pending, "outport": self.outport, "lines": list(self.lines)}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError("i8042 state: not a mapping")
        for k in ("ctr", "status", "pending", "outport"):
            v = state.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
                raise ValueError(f"i8042 state: bad {k}: {v!r}")
        out, lines = state.get("out"), state.get("lines")
        if not isinstance(out, list) or len(out) > 16 or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) and 0 <= e[0] <= 0xFF
                and isinstance(e[1], bool) for e in out):
            raise ValueError("i8042 state: bad out")
        if not isinstance(lines, list) or len(lines) != 2 or not all(isinstance(x, bool) for x in lines):
            raise ValueError("i8042 state: bad lines")
        self.ctr, self.status, self.pending, self.outport = (state["ctr"], state["status"], state["pending"],
                                                             state["outport"])
        self.out = [(v, a) for v, a in out]
        self.lines = (lines[0], lines[1])


__all__ = ["I8042", "PortA", "PostPort"]
