"""The GDB remote serial protocol (engine-free): packet framing and the command set of an all-stop stub.

Framing (GDB manual, "Remote Protocol" / "Overview"): ``$payload#cc`` with a two-hex-digit modulo-256 checksum,
acknowledged by ``+`` (``-`` asks for a resend) until ``QStartNoAckMode``; ``}`` escapes ``#$}*`` (XOR 0x20) in
binary data; a bare 0x03 byte is an interrupt request (Ctrl-C). The commands answered here are those of the
"Packets", "General Query Packets" and "Stop Reply Packets" sections an all-stop stub needs: ``?``, ``g/G``,
``p/P``, ``m/M/X``, ``c/s``, ``vCont``, ``Z0-Z4/z0-z4``, ``H``, ``T``, ``qSupported``, ``qfThreadInfo``,
``qsThreadInfo``, ``qC``, ``qAttached``, ``qThreadExtraInfo``, ``qXfer:features:read``, ``QStartNoAckMode``,
``D``, ``k``. The machine side is a :class:`Target` (viridian.machine.unicorn.debug); threads are vCPUs, numbered from 1.
"""

from __future__ import annotations

import logging
import select
import socket
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

PACKET_SIZE = 0x4000  # the largest packet we accept (qSupported PacketSize)
INTERRUPT = b"\x03"
SIGINT, SIGTRAP = 2, 5


class Disconnected(Exception):
    """The debugger closed the connection (or sent something we cannot frame)."""


@dataclass
class Resume:
    """What the debugger asked for when it let the target go: ``step`` (a thread) or continue; ``detach``,
    ``kill``."""

    step: int | None = None
    detach: bool = False
    kill: bool = False


class Target(Protocol):
    """The machine side (viridian.machine.unicorn.debug.Debugger)."""

    def threads(self) -> list[int]: ...
    def thread_info(self, tid: int) -> str: ...
    def read_registers(self, tid: int) -> bytes: ...
    def write_registers(self, tid: int, data: bytes) -> bool: ...
    def read_register(self, tid: int, regno: int) -> bytes | None: ...
    def write_register(self, tid: int, regno: int, data: bytes) -> bool: ...
    def read_memory(self, tid: int, addr: int, length: int) -> bytes: ...
    def write_memory(self, tid: int, addr: int, data: bytes) -> bool: ...
    def add_point(self, kind: int, addr: int, length: int) -> bool: ...
    def remove_point(self, kind: int, addr: int, length: int) -> bool: ...
    def target_xml(self) -> bytes: ...


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data in a packet: ``# $ } *`` become ``}`` + (byte ^ 0x20)."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out, it = bytearray(), iter(data)
    for b in it:
        out.append(next(it, 0) ^ 0x20 if b == 0x7D else b)
    return bytes(out)


class Connection:
    """One debugger connection: reads packets and interrupt bytes, writes packets."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.ack = True

    def _fill(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            raise Disconnected("the debugger closed the connection")
        self.buf += data
        if len(self.buf) > 4 * PACKET_SIZE:
            raise Disconnected("packet too long")
        return True

    def poll_interrupt(self) -> bool:
        """While the target runs: True if a Ctrl-C (0x03) arrived (other bytes are dropped)."""
        while self._fill(0):
            pass
        hit = INTERRUPT[0] in self.buf
        self.buf.clear()
        return hit

    def read_packet(self) -> bytes:
        """The next packet's payload (blocking); a Ctrl-C outside a packet is returned as b'\\x03'."""
        while True:
            while self.buf and self.buf[0] != ord("$"):
                b = self.buf.pop(0)
                if b == INTERRUPT[0]:
                    return INTERRUPT
            end = self.buf.find(b"#")
            if self.buf and end >= 0 and len(self.buf) >= end + 3:
                payload, cs = bytes(self.buf[1:end]), bytes(self.buf[end + 1:end + 3])
                del self.buf[:end + 3]
                try:
                    good = int(cs, 16) == checksum(payload)
                except ValueError:
                    good = False
                if self.ack:
                    self.sock.sendall(b"+" if good else b"-")
                if good:
                    return payload
                continue
            self._fill(None)

    def send(self, payload: bytes) -> None:
        packet = b"$" + payload + b"#" + b"%02x" % checksum(payload)
        try:
            self.sock.sendall(packet)
        except OSError:
            raise Disconnected("the debugger went away") from None
        # with acks on, the '+' (or a '-' asking for a resend) is consumed by the next read_packet


def _hexint(text: bytes) -> int:
    return int(text, 16)


class Session:
    """Answers packets for ``target`` until the debugger resumes it (:meth:`serve` returns a Resume)."""

    def __init__(self, conn: Connection, target: Target) -> None:
        self.conn, self.target = conn, target
        self.g_thread = self.c_thread = 0  # 0: the thread that stopped

    def stop_reply(self, tid: int, signal: int = SIGTRAP, extra: str = "") -> bytes:
        self.g_thread = 0
        return f"T{signal:02x}thread:{tid:x};{extra}".encode()

    def serve(self, tid: int, reply: bytes, send: bool = True) -> Resume:
        """The target stopped in thread ``tid``: send the stop ``reply`` (not on a new connection: gdb asks
        with ``?``) and answer packets until a resume."""
        self.current, self.last_reply = tid, reply
        if send:
            self.conn.send(reply)
        while True:
            pkt = self.conn.read_packet()
            if pkt == INTERRUPT:
                continue  # already stopped
            try:
                result = self.handle(pkt)
            except Disconnected:
                raise
            except Exception:  # a bug answering a packet ends neither the session nor the guest
                log.exception("gdb packet %r", pkt[:64])
                result = b"E01"
            if isinstance(result, Resume):
                return result
            if result is not None:
                self.conn.send(result)

    def _tid(self, which: int) -> int:
        return self.current if which in (0, -1) else which

    def handle(self, pkt: bytes) -> bytes | Resume | None:
        t = self.target
        cmd, body = pkt[:1], pkt[1:]
        try:
            if cmd == b"?":
                return self.last_reply
            if cmd == b"g":
                return t.read_registers(self._tid(self.g_thread)).hex().encode()
            if cmd == b"G":
                return b"OK" if t.write_registers(self._tid(self.g_thread), bytes.fromhex(body.decode())) \
                    else b"E01"
            if cmd == b"p":
                data = t.read_register(self._tid(self.g_thread), _hexint(body))
                return data.hex().encode() if data is not None else b"E00"
            if cmd == b"P":
                reg, value = body.split(b"=")
                return b"OK" if t.write_register(self._tid(self.g_thread), _hexint(reg),
                                                 bytes.fromhex(value.decode())) else b"E01"
            if cmd == b"m":
                addr, length = (_hexint(x) for x in body.split(b","))
                data = t.read_memory(self._tid(self.g_thread), addr, min(length, PACKET_SIZE // 2))
                return data.hex().encode() if data or not length else b"E14"
            if cmd in (b"M", b"X"):
                head, data = body.split(b":", 1)
                addr, length = (_hexint(x) for x in head.split(b","))
                raw = bytes.fromhex(data.decode()) if cmd == b"M" else unescape(data)
                if len(raw) != length:
                    return b"E01"
                return b"OK" if t.write_memory(self._tid(self.g_thread), addr, raw) else b"E14"
            if cmd in (b"Z", b"z"):
                kind, addr, length = (_hexint(x) for x in body.split(b";")[0].split(b","))
                if kind > 4:
                    return b""
                ok = t.add_point(kind, addr, length) if cmd == b"Z" else t.remove_point(kind, addr, length)
                return b"OK" if ok else b"E01"
            if cmd == b"H":
                which = -1 if body[1:] == b"-1" else _hexint(body[1:])
                if which not in (0, -1) and which not in t.threads():
                    return b"E01"
                if body[:1] == b"g":
                    self.g_thread = which
                else:
                    self.c_thread = which
                return b"OK"
            if cmd == b"T":
                return b"OK" if _hexint(body) in t.threads() else b"E01"
            if cmd == b"c":
                return Resume()
            if cmd == b"s":
                return Resume(step=self._tid(self.c_thread))
            if cmd == b"D":
                self.conn.send(b"OK")
                return Resume(detach=True)
            if cmd == b"k":
                return Resume(kill=True)
            if cmd == b"v":
                return self._v(body)
            if cmd == b"q":
                return self._query(body)
            if cmd == b"Q":
                if body == b"StartNoAckMode":
                    self.conn.send(b"OK")
                    self.conn.ack = False
                    return None
                return b""
        except (ValueError, IndexError):
            return b"E01"
        return b""

    def _v(self, body: bytes) -> bytes | Resume:
        if body == b"Cont?":
            return b"vCont;c;C;s;S"
        if body.startswith(b"Cont;"):
            step = None
            for action in body[5:].split(b";"):
                verb, _, thread = action.partition(b":")
                tid = _hexint(thread) if thread and thread != b"-1" else None
                if verb[:1] not in (b"c", b"C", b"s", b"S"):
                    return b"E01"  # "t" and "r" (range stepping) are not offered by vCont?
                if verb[:1] in (b"s", b"S"):
                    step = self._tid(tid or 0)
            return Resume(step=step)
        if body == b"MustReplyEmpty":
            return b""
        return b""

    def _query(self, body: bytes) -> bytes:
        t = self.target
        if body.startswith(b"Supported"):
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;vContSupported+;"
                    "swbreak+;hwbreak+").encode()
        if body == b"fThreadInfo":
            return b"m" + ",".join(f"{i:x}" for i in t.threads()).encode()
        if body == b"sThreadInfo":
            return b"l"
        if body == b"C":
            return f"QC{self.current:x}".encode()
        if body == b"Attached":
            return b"1"
        if body.startswith(b"ThreadExtraInfo,"):
            return t.thread_info(_hexint(body.split(b",")[1])).encode().hex().encode()
        if body.startswith(b"Xfer:features:read:"):
            annex, _, span = body[len(b"Xfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            offset, length = (_hexint(x) for x in span.split(b","))
            xml = t.target_xml()
            chunk = xml[offset:offset + length]
            return (b"m" if offset + length < len(xml) else b"l") + escape(chunk)
        if body == b"Symbol::":
            return b"OK"
        return b""


def parse_address(spec: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); the host defaults to 127.0.0.1 (never all interfaces unless asked)."""
    host, _, port = spec.rpartition(":")
    value = int(port)
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} out of range")
    return host.strip("[]") or "127.0.0.1", value
