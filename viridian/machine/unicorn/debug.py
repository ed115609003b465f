"""``--gdb [HOST:]PORT``: the machine side of the GDB stub (protocol: viridian.machine.gdbstub).

All-stop: the host runs one vCPU at a time, so while the debugger holds one vCPU no vCPU runs and virtual time
does not advance. gdb threads are the vCPUs (thread i + 1 = vCPU i). Breakpoints are UC_HOOK_CODE hooks on
their address, watchpoints UC_HOOK_MEM_WRITE/READ hooks on their range (guest-virtual addresses; nothing is
written into guest memory); a single step is a code hook on every address of the stepping vCPU, removed at
the stop. No hook counts an exit or charges time.

Where a vCPU waits: a breakpoint or a step stop is served inside the code hook, before the instruction
runs; resuming returns from the hook and the guest goes on exactly as if it had not stopped (same exits,
same virtual time). Only changing what the engine runs from there (a breakpoint or watchpoint added or
removed, code memory or RIP written, a step of this vCPU) ends the engine run at that instruction, with the
run loop's own stop (no yield, the slice goes on). A watchpoint, a Ctrl-C and a new connection are served
by :meth:`Debugger.after_slice` (called by Machine.run_vcpu after every slice): a watchpoint stops the vCPU
with its run loop's yield (stop_requested + yield_pending), at the end of the translation block that made
the access (accesses run without exit checks, ENGINE_NOTES.md), so gdb sees the value written.
Without a debugger attached and without points nothing is installed, so a run with --gdb gives the same stats
as one without. A stop on the instruction right after an RDMSR/WRMSR completes that MSR access first (the model's
answer is in RAX:RDX when gdb looks). Not reached: the 16/32-bit code a multiboot kernel or a SIPI-started AP
runs before long mode (realmode.py runs it in separate engines at once); its vCPU's registers are those of
its 64-bit engine until then.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, cast

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X

from viridian.errors import UserError
from viridian.machine.gdbstub import SIGINT, SIGTRAP, Connection, Disconnected, Session, parse_address

if TYPE_CHECKING:
    from viridian.machine.machine import Machine, RunResult
    from viridian.machine.unicorn.vcpu import Vcpu

# gdb's amd64 register order (the core feature must list exactly these first), then ours
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))
SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
SYSTEM = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
# (name, bytes, unicorn register id or None, writable)
REGS: list[tuple[str, int, int | None, bool]] = [
    *((n, 8, getattr(X, f"UC_X86_REG_{n.upper()}"), True) for n in GPRS),
    ("rip", 8, X.UC_X86_REG_RIP, True), ("eflags", 4, X.UC_X86_REG_RFLAGS, True),
    *((n, 4, getattr(X, f"UC_X86_REG_{n.upper()}"), False) for n in SEGS),
    *((f"st{i}", 10, getattr(X, f"UC_X86_REG_FP{i}"), False) for i in range(8)),
    ("fctrl", 4, X.UC_X86_REG_FPCW, False), ("fstat", 4, X.UC_X86_REG_FPSW, False),
    ("ftag", 4, X.UC_X86_REG_FPTAG, False), *((n, 4, None, False) for n in X87_CTRL[3:]),
    *((f"xmm{i}", 16, getattr(X, f"UC_X86_REG_XMM{i}"), True) for i in range(16)),
    ("mxcsr", 4, X.UC_X86_REG_MXCSR, True),
    ("fs_base", 8, X.UC_X86_REG_FS_BASE, True), ("gs_base", 8, X.UC_X86_REG_GS_BASE, True),
    ("cr0", 8, X.UC_X86_REG_CR0, False), ("cr2", 8, X.UC_X86_REG_CR2, False),
    ("cr3", 8, X.UC_X86_REG_CR3, False), ("cr4", 8, X.UC_X86_REG_CR4, False),
    ("cr8", 8, X.UC_X86_REG_CR8, False), ("efer", 8, None, False),
]
EFER = 0xC000_0080


def _target_xml() -> bytes:
    """An x86-64 target description (GDB manual "Target Descriptions", i386 features)."""
    def reg(name: str, size: int, regnum: int) -> str:
        kind = {"rip": "code_ptr", "rsp": "data_ptr", "rbp": "data_ptr"}.get(name)
        if kind is None:
            kind = {10: "i387_ext", 16: "uint128", 4: "int32"}.get(size, "int64")
        return f'<reg name="{name}" bitsize="{size * 8}" type="{kind}" regnum="{regnum}"/>'

    groups = {"org.gnu.gdb.i386.core": (0, 40), "org.gnu.gdb.i386.sse": (40, 57),
              "org.gnu.gdb.i386.segments": (57, 59), "org.viridian.x86.system": (59, len(REGS))}
    body = "".join(f'<feature name="{feat}">' + "".join(reg(REGS[i][0], REGS[i][1], i) for i in range(a, b))
                   + "</feature>" for feat, (a, b) in groups.items())
    return ('<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0">'
            f"<architecture>i386:x86-64</architecture>{body}</target>").encode()


class Debugger:
    """The gdb server of one machine (the first partition of a run)."""

    def __init__(self, machine: Machine, spec: str) -> None:
        try:
            host, port = parse_address(spec)
        except ValueError:
            raise UserError(f"--gdb {spec}: give [HOST:]PORT") from None
        self.m = machine
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.listener = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise UserError(f"--gdb {spec}: cannot listen: {exc.strerror}") from None
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.session: Session | None = None
        self._stop: tuple[int, int, str] | None = None  # (vCPU, signal, stop-reply extra)
        self._skip: dict[int, int] = {}  # vCPU -> breakpoint address to pass once (it stopped there)
        # (kind, addr, len) -> its hooks; installed once and kept until detach (gdb removes and re-inserts
        # every point at each stop: re-inserting one that is still installed changes no translation)
        self._hooks: dict[tuple[int, int, int], list[tuple[Any, int]]] = {}
        self._points: set[tuple[int, int, int]] = set()  # the points gdb has inserted now
        self._step: tuple[Any, int] | None = None
        self._step_from: int | None = None
        self._in_hook: Vcpu | None = None  # the vCPU held inside a code hook (its engine is mid-block)
        self._modified = False  # while held there: something requires its engine to stop at the instruction
        self._xml = _target_xml()
        self.vcpus = cast("list[Vcpu]", machine.vcpus)  # this engine's vCPUs (the machine sees VcpuBackend)
        machine.debugger = self

    # -- connection ---------------------------------------------------------------------------------------
    def announce(self) -> None:
        host = f"[{self.address[0]}]" if ":" in self.address[0] else self.address[0]
        print(f"viridian: gdb server on {host}:{self.address[1]} (target remote {host}:{self.address[1]})",
              file=sys.stderr, flush=True)

    def wait(self) -> None:
        """--gdb-wait: block until gdb connects, stopped before vCPU 0's first instruction."""
        self.listener.setblocking(True)
        try:
            sock, _ = self.listener.accept()
        finally:
            self.listener.setblocking(False)
        self._connect(sock)
        self._serve(0, SIGTRAP, "", announce=False)

    def _connect(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = Session(Connection(sock), self)

    def after_slice(self, v: Vcpu) -> None:
        """After each slice of a vCPU: serve a stop, a Ctrl-C or a new connection (all-stop: nothing runs)."""
        self._skip.pop(v.index, None)
        if self._stop is not None:
            self._end_step()
            vcpu, signal, extra = self._stop
            self._stop = None
            self._serve(vcpu, signal, extra)
            return
        if self.session is None:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, OSError):
                return
            self._connect(sock)
            self._serve(v.index, SIGTRAP, "", announce=False)
            return
        try:
            interrupted = self.session.conn.poll_interrupt()
        except Disconnected:
            self._detach()
            return
        if interrupted:
            self._serve(v.index, SIGINT, "")

    def _serve(self, vcpu: int, signal: int, extra: str, announce: bool = True) -> None:
        s = self.session
        if s is None:
            return
        reply = s.stop_reply(vcpu + 1, signal, extra)
        try:
            res = s.serve(vcpu + 1, reply, send=announce)
        except Disconnected:
            self._detach()
            return
        if res.kill:
            self.m.finish("stopped", detail="killed from gdb")
            self._detach()
            return
        if res.detach:
            self._detach()
            return
        if res.step is not None and 1 <= res.step <= len(self.vcpus):
            self._begin_step(self.vcpus[res.step - 1])
        for o in self.vcpus:  # a vCPU whose engine stopped on a breakpoint passes it once when it goes on
            if o is self._in_hook and not self._modified:
                continue  # returning from the hook runs the instruction
            rip = o.next_rip if o.next_rip is not None else int(o.uc.reg_read(X.UC_X86_REG_RIP))
            if any(k[0] in (0, 1) and k[1] == rip for k in self._points):
                self._skip[o.index] = rip

    def _detach(self) -> None:
        """Remove every point and hook; the guest goes on (gdb's detach)."""
        for hooks in self._hooks.values():
            for uc, handle in hooks:
                uc.hook_del(handle)
        self._hooks.clear()
        self._points.clear()
        self._end_step()
        self._skip.clear()
        if self.session is not None:
            with contextlib.suppress(OSError):
                self.session.conn.sock.close()
        self.session = None

    def close(self, result: RunResult | None) -> None:
        """The run ended: tell a connected debugger (W exit code / X signal) and stop listening."""
        if self.session is not None:
            try:
                if result is not None and result.status == "exit":
                    self.session.conn.send(b"W%02x" % ((result.code or 0) & 0xFF))
                else:
                    self.session.conn.send(b"X%02x" % 9)  # SIGKILL: ended another way (status in the summary)
            except Disconnected:
                pass
        self._detach()
        self.listener.close()

    # -- stops ------------------------------------------------------------------------------------------------
    def _hold(self, v: Vcpu, signal: int, extra: str, address: int) -> None:
        """A breakpoint or step inside its code hook: serve gdb right here, before the instruction runs."""
        site = int(v.native.pending_site)
        if site and address - site in (2, 3):  # an RDMSR/WRMSR just ran: complete it first (vcpu.py _msr_done)
            v.guard(v.msr_done)(v.uc, address, 0, None)
        self._end_step()
        self._in_hook, self._modified = v, False
        try:
            self._serve(v.index, signal, extra)
        finally:
            self._in_hook = None
        if self._modified or self.m.done:
            v.stop()  # the engine stops before this instruction (exit check after code hooks); the loop goes on

    def _changed(self, v: Vcpu) -> None:
        """What ``v``'s engine runs changed: if it is held inside a hook, stop it there when gdb resumes."""
        if v is self._in_hook:
            self._modified = True

    def _request_stop(self, v: Vcpu, signal: int, extra: str) -> None:
        if self._stop is None:
            self._stop = (v.index, signal, extra)
        v.stop_requested = v.yield_pending = True  # the run loop ends this slice (vcpu.py)
        v.uc.emu_stop()

    def _begin_step(self, v: Vcpu) -> None:
        self._step_from = int(v.uc.reg_read(X.UC_X86_REG_RIP))

        def hook(uc: Any, address: int, size: int, _ud: Any) -> None:
            if address == self._step_from:
                self._step_from = None  # the instruction being stepped: let it run
                return
            if self._step is not None:
                self._hold(v, SIGTRAP, "", address)

        self._step = (v, v.uc.hook_add(4, hook, None, 1, 0))  # UC_HOOK_CODE on every address
        v.forget_code()  # translations made before carry no call to the new hook
        self._changed(v)

    def _end_step(self) -> None:
        if self._step is not None:
            v, handle = self._step
            v.uc.hook_del(handle)
            self._step = None

    # -- Target (gdbstub) -------------------------------------------------------------------------------------
    def threads(self) -> list[int]:
        return [v.index + 1 for v in self.vcpus]

    def thread_info(self, tid: int) -> str:
        if not 1 <= tid <= len(self.vcpus):
            return ""
        v = self.vcpus[tid - 1]
        state = "waiting for SIPI" if v.wait_sipi else "halted" if v.halted else "idle" if v.idle else "runnable"
        return f"vCPU {v.index} ({state})"

    def _vcpu(self, tid: int) -> Vcpu:
        return self.vcpus[tid - 1 if 1 <= tid <= len(self.vcpus) else 0]

    def _read_reg(self, v: Vcpu, i: int) -> bytes:
        name, size, reg, _ = REGS[i]
        if name == "rip" and v.next_rip is not None:
            value = v.next_rip
        elif name == "efer":
            value = int(v.uc.msr_read(EFER))
        elif reg is None:
            value = 0
        elif size == 10:
            mant, exp = v.uc.reg_read(reg)
            return struct.pack("<QH", mant & (2**64 - 1), exp & 0xFFFF)
        else:
            value = int(v.uc.reg_read(reg))
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read_registers(self, tid: int) -> bytes:
        v = self._vcpu(tid)
        return b"".join(self._read_reg(v, i) for i in range(len(REGS)))

    def read_register(self, tid: int, regno: int) -> bytes | None:
        return self._read_reg(self._vcpu(tid), regno) if 0 <= regno < len(REGS) else None

    def write_register(self, tid: int, regno: int, data: bytes) -> bool:
        if not 0 <= regno < len(REGS) or len(data) != REGS[regno][1]:
            return False
        v = self._vcpu(tid)
        if self._read_reg(v, regno) == data:
            return True
        _, _, reg, writable = REGS[regno]
        if not writable or reg is None:
            return False
        value = int.from_bytes(data, "little")
        if reg == X.UC_X86_REG_RIP and v is self._in_hook:  # engine rule: no RIP write inside a code hook
            v.next_rip = value  # the run loop applies it once the engine stopped (vcpu.py _apply_deferred)
            self._changed(v)
            return True
        v.uc.reg_write(reg, value)
        return True

    def write_registers(self, tid: int, data: bytes) -> bool:
        pos, ok = 0, True
        for i, (_, size, _, _) in enumerate(REGS):
            if pos + size > len(data):
                break
            ok &= self.write_register(tid, i, data[pos:pos + size])
            pos += size
        return ok

    def read_memory(self, tid: int, addr: int, length: int) -> bytes:
        """Guest-virtual memory through the thread's page tables; stops at the first unmapped byte."""
        v = self._vcpu(tid)
        cr3, cr0 = v.paging()
        out = bytearray()
        while length > 0:
            chunk = min(length, 0x1000 - (addr & 0xFFF))
            data = self.m.walker.read(cr3, cr0, addr, chunk)
            if data is None:
                break
            out += data
            addr, length = (addr + chunk) & (2**64 - 1), length - chunk
        return bytes(out)

    def write_memory(self, tid: int, addr: int, data: bytes) -> bool:
        v = self._vcpu(tid)
        cr3, cr0 = v.paging()
        pages = {self.m.walker.translate(cr3, cr0, a) for a in range(addr & ~0xFFF, addr + len(data), 0x1000)}
        if None in pages or not self.m.walker.write(cr3, cr0, addr, data):
            return False
        for pa in pages:  # code coherence: every vCPU retranslates (and rescans) a written code page
            assert pa is not None
            for o in self.vcpus:
                if pa & ~0xFFF in o.code_vas:
                    self._changed(o)
                o.forget_physical(pa & ~0xFFF, drop_cache=True)
        return True

    def add_point(self, kind: int, addr: int, length: int) -> bool:
        key = (kind, addr, 1 if kind in (0, 1) else max(1, length))
        self._points.add(key)
        if key in self._hooks:
            return True
        hooks: list[tuple[Any, int]] = []
        for v in self.vcpus:
            if kind in (0, 1):
                hooks.append((v.uc, v.uc.hook_add(4, self._bp_hook(v, key), None, addr, addr)))
            else:
                types = {2: UC_HOOK_MEM_WRITE, 3: UC_HOOK_MEM_READ, 4: UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}[kind]
                hooks.append((v.uc, v.uc.hook_add(types, self._watch_hook(v, key), None, addr,
                                                  addr + key[2] - 1)))
            v.forget_code()  # existing translations have no call to the new hook (nor slow-path accesses)
            self._changed(v)
        self._hooks[key] = hooks
        return True

    def remove_point(self, kind: int, addr: int, length: int) -> bool:
        key = (kind, addr, 1 if kind in (0, 1) else max(1, length))
        self._points.discard(key)  # its hooks stay installed, inactive
        return True

    def _bp_hook(self, v: Vcpu, key: tuple[int, int, int]) -> Any:
        def hook(uc: Any, address: int, size: int, _ud: Any) -> None:
            if key not in self._points:
                return
            if self._skip.get(v.index) == address:
                del self._skip[v.index]
                return
            if self._in_hook is None:
                self._hold(v, SIGTRAP, "swbreak:;", address)

        return hook

    def _watch_hook(self, v: Vcpu, key: tuple[int, int, int]) -> Any:
        label = {2: "watch", 3: "rwatch", 4: "awatch"}[key[0]]

        def hook(uc: Any, access: int, address: int, size: int, value: int, _ud: Any) -> None:
            if key in self._points:
                self._request_stop(v, SIGTRAP, f"{label}:{address:x};")

        return hook

    def target_xml(self) -> bytes:
        return self._xml


def start_debugger(machine: Machine, spec: str | None, wait: bool) -> Debugger | None:
    """``--gdb [HOST:]PORT [--gdb-wait]``: listen (and with --gdb-wait, serve gdb before the first instruction)."""
    if spec is None:
        if wait:
            raise UserError("--gdb-wait needs --gdb [HOST:]PORT")
        return None
    debugger = Debugger(machine, spec)
    debugger.announce()
    if wait:
        debugger.wait()
    return debugger
