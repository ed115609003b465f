"""Resetting the engine's hidden CPU state through the public API only: a register-API round trip over a clean
saved context.

Unicorn keeps state the register API cannot write (engine facts, Unicorn 2.1.4, copied from the fast engine's
notes in docs/architecture.md): the CPL lives in QEMU's ``hflags`` and a CS/SS write in a 64-bit instance sets
only the selector, so delivering an event from CPL 3 to CPL 0 cannot lower it; and ``old_exception`` is never
reset (Unicorn skips QEMU's do_interrupt), so a second #PF/#GP would be escalated to a spurious #DF (then a
triple fault that halts the engine). The fast engine patches both at offsets it probes; here the vCPU's
architectural state is read through the register API, a context saved from a fresh instance (CPL 0, no fault
recorded, no interrupt shadow) is restored, and the state is written back (SDM vol. 3 §2: every register
software can see). Nothing else the engine hides is architectural for our guests (no XSAVE is offered, so
XCR0 stays at its reset value; cpuid_base.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

from unicorn import x86_const as X

from viridian.machine.reference.regs import RegSet

_MSRS = (0xC000_0080, 0x174, 0x175, 0x176, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084,
         0xC000_0102, 0xC000_0103, 0x277)  # EFER first; SYSENTER, STAR.., KERNEL_GS_BASE, TSC_AUX, PAT
_FS_BASE, _GS_BASE = 0xC000_0100, 0xC000_0101
_PLAIN = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RSI,
          X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP, *(getattr(X, f"UC_X86_REG_R{i}") for i in range(8, 16)),
          X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_CR2, X.UC_X86_REG_CR8,
          *(getattr(X, f"UC_X86_REG_DR{i}") for i in (0, 1, 2, 3, 6, 7)),
          X.UC_X86_REG_MXCSR, X.UC_X86_REG_FPCW, X.UC_X86_REG_FPSW, X.UC_X86_REG_FIP, X.UC_X86_REG_FCS,
          X.UC_X86_REG_FDP, X.UC_X86_REG_FDS, X.UC_X86_REG_FOP)
_XMM = tuple(getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16))
_CTRL = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)
_SEGS = (X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES)
_TABLES = (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR)
_FP = tuple(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8))
_plain, _xmm, _ctrl, _segs = RegSet(_PLAIN), RegSet(_XMM), RegSet(_CTRL), RegSet(_SEGS)


def capture(uc: Any) -> dict[str, Any]:
    """Everything the register API can read that a guest can see (64-bit instance)."""
    h = uc._uch
    out: dict[str, Any] = {
        "plain": list(_plain.read(h)), "xmm": (_xmm.read(h), _xmm.wide(0, 16))[1],
        "ctrl": list(_ctrl.read(h)), "segs": list(_segs.read(h)),
        "tables": [uc.reg_read(r) for r in _TABLES], "fs": int(uc.reg_read(X.UC_X86_REG_FS)),
        "gs": int(uc.reg_read(X.UC_X86_REG_GS)), "msrs": [int(uc.msr_read(i)) for i in _MSRS],
        "bases": (int(uc.msr_read(_FS_BASE)), int(uc.msr_read(_GS_BASE))),
        "fptag": int(uc.reg_read(X.UC_X86_REG_FPTAG)), "fp": [uc.reg_read(r) for r in _FP],
        "ymm": [int(uc.reg_read(getattr(X, f"UC_X86_REG_YMM{i}"))) for i in range(16)],
    }
    return out


def apply(uc: Any, s: dict[str, Any], *, segs: tuple[int, int] | None = None) -> None:
    """Write ``s`` back (after a clean context was restored); ``segs``: CS and SS to load instead of the
    captured ones (an event delivery's new selectors)."""
    h = uc._uch
    for reg, value in zip(_TABLES, s["tables"], strict=True):
        uc.reg_write(reg, value)
    cr0, cr3, cr4 = s["ctrl"]
    uc.reg_write(X.UC_X86_REG_CR3, cr3)
    uc.reg_write(X.UC_X86_REG_CR4, cr4)
    uc.msr_write(_MSRS[0], s["msrs"][0])
    uc.reg_write(X.UC_X86_REG_CR0, cr0)
    cs, ss, ds, es = s["segs"]
    if segs is not None:
        cs, ss = segs
    _segs.write(h, (cs, ss, ds, es))
    for reg, sel in ((X.UC_X86_REG_FS, s["fs"]), (X.UC_X86_REG_GS, s["gs"])):
        with contextlib.suppress(Exception):  # loads the descriptor from the GDT; unreadable: the selector alone
            uc.reg_write(reg, sel)
    for index, value in zip(_MSRS[1:], s["msrs"][1:], strict=True):
        uc.msr_write(index, value)
    uc.msr_write(_FS_BASE, s["bases"][0])
    uc.msr_write(_GS_BASE, s["bases"][1])
    for i, value in enumerate(s["ymm"]):
        uc.reg_write(getattr(X, f"UC_X86_REG_YMM{i}"), value)
    _xmm.write(h, s["xmm"])
    for reg, value in zip(_FP, s["fp"], strict=True):
        uc.reg_write(reg, value)
    uc.reg_write(X.UC_X86_REG_FPTAG, s["fptag"])
    _plain.write(h, s["plain"])


def reset_hidden(uc: Any, clean: Any, *, segs: tuple[int, int] | None = None) -> None:
    """Restore the clean context ``clean`` under the current architectural state (see the module docstring)."""
    state = capture(uc)
    uc.context_restore(clean)
    apply(uc, state, segs=segs)
