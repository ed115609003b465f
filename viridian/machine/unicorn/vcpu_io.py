"""Port I/O of one vCPU (engine side): the IN/OUT hooks. Without --trace or --fast, the console's two hot
accesses (COM1 LSR reads, THR writes with DLAB = 0) are answered natively (csrc vn_in/vn_out) and collected
here as exits, in order; everything else reaches the machine's port bus through the Python handlers."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from viridian.machine.ports import COM1
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn.native import function_address

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p)
LSR = COM1 + 5


def install(v: Vcpu, lib: Any, native: bool) -> None:
    """IN/OUT hooks: Python handlers only, or vn_in/vn_out in front of them (``native``)."""
    uc, traps = v.uc, v.traps
    if not native or v.m.ports.device(COM1) is not v.m.ports.serial:
        uc.hook_add(UC_HOOK_INSN, v.guard(traps.on_in), None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, v.guard(traps.on_out), None, 1, 0, X.UC_X86_INS_OUT)
        return
    port_in, port_out = v.guard(traps.on_in, 0), v.guard(traps.on_out)
    cb_in = _IN_CB(lambda _h, port, size, _ud: port_in(uc, port, size, None))
    cb_out = _OUT_CB(lambda _h, port, size, value, _ud: port_out(uc, port, size, value, None))
    v.keep_alive += [cb_in, cb_out]
    n = v.native
    n.io_in_slow, n.io_out_slow = ctypes.cast(cb_in, ctypes.c_void_p), ctypes.cast(cb_out, ctypes.c_void_p)
    n.com1_base = COM1
    E.hook_insn_native(uc, X.UC_X86_INS_IN, function_address(lib, "vn_in"), ctypes.addressof(n))
    E.hook_insn_native(uc, X.UC_X86_INS_OUT, function_address(lib, "vn_out"), ctypes.addressof(n))


def arm(v: Vcpu) -> None:
    """Before a run and after each OUT: whether LSR reads and THR writes may be answered natively (the UART is
    shared; another vCPU may set DLAB). Loopback, pending receive data and an interrupt-driven transmitter
    (IER.ETBEI) need the Python model (viridian.devices.uart16550.Serial16550.native_ok)."""
    lsr_ok, thr_ok = v.m.ports.serial.native_ok()
    n = v.native
    n.com1_base = COM1 if lsr_ok and n.io_in_slow else 0  # 0: vn_in/vn_out answer nothing themselves
    n.thr_native = int(thr_ok)


def collect(v: Vcpu) -> None:
    """Account the accesses vn_in/vn_out answered as io exits and hand their bytes to the serial port."""
    n = v.native
    reads, written = int(n.lsr_reads), int(n.serial_len)
    if not (reads or written):
        return
    n.lsr_reads = n.serial_len = 0
    st = v.stats
    st.by_reason["io"] += reads + written
    if reads:
        st.ports[LSR] += reads
    if written:
        st.ports[COM1] += written
        v.m.ports.serial.transmit(bytes(n.serial_buf[:written]))
    m = v.m
    if m.running is v:  # the partition clock as the last of those exits left it (Vcpu._exit)
        now = m.slice_t0 + (int(n.io_last) - m.slice_b0)
        m.clock.catch_up(now)
