"""QEMU's hyperv-testdev (``-device hyperv-testdev``; QEMU hw/misc/hyperv_testdev.c), engine-free.

A 4-byte I/O region at 0x3000 that lets a guest-side SynIC test act as the host: only 32-bit writes are valid
(reads return 0). The written value is ``conn_id << 24 | ctl << 16 | vp_index << 8 | sint`` (8 bits each):

==== ======================== =====================================================================================
ctl  name                     effect here (through the partition's public API)
==== ======================== =====================================================================================
1    SINT_ROUTE_CREATE        a route to SINTx of that VP
2    SINT_ROUTE_DESTROY       removes it
3    SINT_ROUTE_SET_SINT      raises SINTx on that VP (``SynIC.assert_sint``: SynIC enabled, SINTx unmasked)
4    MSG_CONN_CREATE          connection ``conn_id``: an HvPostMessage to it is delivered, same type and payload,
                              into SIM slot ``sint`` of that VP (``PortRegistry.create_message_port``; queued
                              while the slot is busy, as the model does for every message port)
5    MSG_CONN_DESTROY         removes connection ``conn_id``
6    EVT_CONN_CREATE          connection ``conn_id``: an HvSignalEvent (flag number 0) sets event flag ``conn_id``
                              of SIEF slot ``sint`` of that VP and raises SINTx when the flag was clear
                              (``create_event_port`` with flag_base = conn_id, one flag)
7    EVT_CONN_DESTROY         removes connection ``conn_id``
==== ======================== =====================================================================================

Other control codes are ignored, as in QEMU. Where QEMU aborts the whole emulator (an assert: destroying or
setting a route that does not exist, a connection id already in use, a VP that does not exist) the request is
ignored here and counted in ``misuse`` -- the host never crashes on guest input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from viridian.partition.ports import EventPort, MessagePort, ports_of

if TYPE_CHECKING:
    from viridian.partition.partition import Partition

PORT: Final = 0x3000
PORTS: Final = range(PORT, PORT + 4)
DEVICE_NAME: Final = "hyperv-testdev"

SINT_ROUTE_CREATE: Final = 1
SINT_ROUTE_DESTROY: Final = 2
SINT_ROUTE_SET_SINT: Final = 3
MSG_CONN_CREATE: Final = 4
MSG_CONN_DESTROY: Final = 5
EVT_CONN_CREATE: Final = 6
EVT_CONN_DESTROY: Final = 7
SINT_COUNT: Final = 16


def encode(ctl: int, vp: int = 0, sint: int = 0, conn_id: int = 0) -> int:
    """The 32-bit value a guest writes to port 0x3000."""
    return (conn_id & 0xFF) << 24 | (ctl & 0xFF) << 16 | (vp & 0xFF) << 8 | sint & 0xFF


@dataclass
class HypervTestDev:
    """The device of one partition: its SINT routes and the connections it created."""

    partition: Partition
    routes: list[tuple[int, int]] = field(default_factory=list)  # (vp, sint), newest first as in QEMU's list
    msg_conns: dict[int, tuple[int, int]] = field(default_factory=dict)  # conn_id -> (vp, sint)
    evt_conns: dict[int, tuple[int, int]] = field(default_factory=dict)
    sints_raised: int = 0  # SINT_ROUTE_SET_SINT requests that delivered an interrupt
    misuse: int = 0  # requests QEMU would abort on

    def read(self, port: int, size: int) -> int:
        return 0  # QEMU hv_test_dev_read

    def write(self, port: int, size: int, value: int) -> None:
        if size != 4 or port != PORT:
            return  # QEMU: .valid.min/max_access_size = 4 on a 4-byte region
        self.control(value & 0xFFFF_FFFF)

    def control(self, value: int) -> None:
        """QEMU hv_test_dev_write: decode and act."""
        sint, vp, ctl, conn = value & 0xFF, value >> 8 & 0xFF, value >> 16 & 0xFF, value >> 24 & 0xFF
        if ctl in (SINT_ROUTE_CREATE, MSG_CONN_CREATE, EVT_CONN_CREATE) and not self._target_ok(vp, sint):
            self.misuse += 1  # QEMU hyperv_sint_route_new fails -> assert
            return
        if ctl == SINT_ROUTE_CREATE:
            self.routes.insert(0, (vp, sint))
        elif ctl in (SINT_ROUTE_DESTROY, SINT_ROUTE_SET_SINT):
            if (vp, sint) not in self.routes:
                self.misuse += 1
            elif ctl == SINT_ROUTE_DESTROY:
                self.routes.remove((vp, sint))
            elif self.partition.vps[vp].synic.assert_sint(sint):
                self.sints_raised += 1
        elif ctl in (MSG_CONN_CREATE, EVT_CONN_CREATE):
            self._create(ctl, conn, vp, sint)
        elif ctl in (MSG_CONN_DESTROY, EVT_CONN_DESTROY):
            self._destroy(ctl, conn)

    def _target_ok(self, vp: int, sint: int) -> bool:
        return vp < len(self.partition.vps) and sint < SINT_COUNT

    def _create(self, ctl: int, conn: int, vp: int, sint: int) -> None:
        registry = ports_of(self.partition)
        try:
            if ctl == MSG_CONN_CREATE:
                registry.create_message_port(conn, vp, sint)
                self.msg_conns[conn] = (vp, sint)
            else:
                registry.create_event_port(conn, vp, sint, flag_base=conn, flag_count=1)
                self.evt_conns[conn] = (vp, sint)
        except ValueError:  # connection id in use (QEMU: hyperv_set_*_handler fails -> assert)
            self.misuse += 1

    def _destroy(self, ctl: int, conn: int) -> None:
        registry = ports_of(self.partition)
        mine = self.msg_conns if ctl == MSG_CONN_DESTROY else self.evt_conns
        kind = MessagePort if ctl == MSG_CONN_DESTROY else EventPort
        if conn not in mine or not isinstance(registry.lookup(conn), kind):
            self.misuse += 1
            return
        del mine[conn]
        registry.delete(conn)

    # -- snapshots (viridian.devices.pc_api) -------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"routes": [list(r) for r in self.routes],
                "msg_conns": {str(k): list(v) for k, v in self.msg_conns.items()},
                "evt_conns": {str(k): list(v) for k, v in self.evt_conns.items()},
                "sints_raised": self.sints_raised, "misuse": self.misuse}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore routes and re-create the connections in the partition's registry."""
        routes = [self._pair(r) for r in _list(state.get("routes"))]
        conns = [{self._conn(k): self._pair(v) for k, v in _dict(state.get(name)).items()}
                 for name in ("msg_conns", "evt_conns")]
        counters = [state.get("sints_raised"), state.get("misuse")]
        if not all(isinstance(c, int) and c >= 0 for c in counters):
            raise ValueError(f"hyperv-testdev counters {counters!r}")
        registry = ports_of(self.partition)
        for conn in [*self.msg_conns, *self.evt_conns]:
            registry.delete(conn)
        self.routes, self.msg_conns, self.evt_conns = routes, {}, {}
        for ctl, table in ((MSG_CONN_CREATE, conns[0]), (EVT_CONN_CREATE, conns[1])):
            for conn, (vp, sint) in table.items():
                registry.delete(conn)
                self._create(ctl, conn, vp, sint)
        self.sints_raised, self.misuse = int(counters[0] or 0), int(counters[1] or 0)

    def _pair(self, v: Any) -> tuple[int, int]:
        if (not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, int) for x in v)
                or not self._target_ok(v[0], v[1]) or min(v) < 0):
            raise ValueError(f"hyperv-testdev (vp, sint) {v!r}")
        return v[0], v[1]

    @staticmethod
    def _conn(k: Any) -> int:
        if not isinstance(k, str) or not k.isdigit() or int(k) > 0xFF:
            raise ValueError(f"hyperv-testdev connection id {k!r}")
        return int(k)


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"hyperv-testdev state: expected a list, got {type(v).__name__}")
    return v


def _dict(v: Any) -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"hyperv-testdev state: expected a mapping, got {type(v).__name__}")
    return v


def attach(machine: Any) -> HypervTestDev:
    """Add the device at 0x3000-0x3003 of ``machine``'s port bus (``--device hyperv-testdev``)."""
    dev = HypervTestDev(machine.partition)
    machine.ports.attach(PORTS, dev)
    return dev


__all__ = ["DEVICE_NAME", "PORT", "HypervTestDev", "attach", "encode"]
