"""SYSCALL (SDM vol. 2B "SYSCALL"), which Unicorn does not execute: its helper only calls UC_HOOK_INSN hooks
and steps over the instruction (measured: without a hook, SYSCALL is a two-byte no-op). The vCPU's hook
stops the engine right after it (QEMU ends a translation block at SYSCALL), and the run loop performs the
architectural transfer here. SYSRET, SWAPGS and the MSRs (STAR, LSTAR, CSTAR, FMASK) are Unicorn's own.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from viridian.machine.unicorn import engine as E

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

STAR, LSTAR, CSTAR, FMASK = 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084
EFER_SCE, EFER_LMA = 1 << 0, 1 << 10
RFLAGS_RF = 1 << 16


def _code_is_64bit(v: Vcpu, cs: int) -> bool:
    """The L bit of CS's descriptor (compatibility mode enters at CSTAR instead of LSTAR)."""
    _sel, base, limit, _flags = v.uc.reg_read(X.UC_X86_REG_GDTR)
    index = cs & ~7
    if index + 7 > limit:
        return True
    raw = v.read_virtual(base + index, 8)
    return raw is None or bool(struct.unpack("<Q", raw)[0] >> 53 & 1)


def enter_syscall(v: Vcpu) -> None:
    """RIP is the instruction after SYSCALL: #UD unless EFER.SCE; else RCX = RIP, R11 = RFLAGS, RFLAGS &=
    ~FMASK, CS = STAR[47:32] (CPL 0, flat), SS = CS + 8, RIP = LSTAR (CSTAR from compatibility mode)."""
    uc = v.uc
    rip, rflags = v.rip_flags.read()
    efer = int(uc.msr_read(E.EFER))
    if not efer & EFER_SCE:
        v.raise_exception(6, None, rip - 2, count_exit=True, deferred=False)
        return
    cs = int(uc.reg_read(X.UC_X86_REG_CS))
    long_mode = bool(efer & EFER_LMA)
    target = int(uc.msr_read(LSTAR if not long_mode or _code_is_64bit(v, cs) else CSTAR))
    star = int(uc.msr_read(STAR))
    uc.reg_write(X.UC_X86_REG_RCX, rip)
    if not long_mode:  # legacy mode: EIP = STAR[31:0], IF/VM/RF cleared
        target, mask = star & 0xFFFF_FFFF, (1 << 9) | (1 << 17) | RFLAGS_RF
    else:
        mask = int(uc.msr_read(FMASK)) | RFLAGS_RF
        uc.reg_write(X.UC_X86_REG_R11, rflags & ~RFLAGS_RF)
    sel = (star >> 32) & 0xFFFC
    if cs & 3 and (off := E.hflags_offset()) is not None:
        E.set_cpl(uc, off, 0)  # a CS/SS write cannot lower Unicorn's hidden CPL (engine.py)
    uc.reg_write(X.UC_X86_REG_CS, sel)
    uc.reg_write(X.UC_X86_REG_SS, sel + 8)
    uc.reg_write(X.UC_X86_REG_RFLAGS, rflags & ~mask)
    uc.reg_write(X.UC_X86_REG_RIP, target)
    v.stats.events["syscall"] += 1
