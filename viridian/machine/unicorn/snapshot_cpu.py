"""A vCPU's architectural state as named fields, read and applied through Unicorn's register API only.

No engine context bytes: Unicorn's saved context is its internal CPU structure (host pointers included), so a
snapshot never carries it. Saved: GPRs, RIP, RFLAGS, the six segment selectors, GDTR/IDTR (base, limit),
LDTR/TR (selector, base, limit, attributes), CR0/2/3/4/8, DR0-7, the MSRs the engine itself keeps
(``vcpu.NATIVE_MSRS``: EFER, STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*, FS/GS/KERNEL_GS base, TSC_AUX), x87
(FPCW/FPSW/FPTAG, FP0-7 as mantissa + sign/exponent, FIP/FCS/FDP/FDS/FOP), MXCSR and YMM0-15 (XMM0-15 are
their low halves). Everything the model keeps (APIC, PAT, MTRRs, TSC offset...) is saved by its own object.

Engine limits, followed on load: in a 64-bit Unicorn instance a CS/SS/DS/ES write sets only the selector (the
hidden base/limit/attributes stay the flat 64-bit ones, which is what long mode uses), FS/GS writes load their
descriptor from the GDT/LDT (checked readable first, then FS_BASE/GS_BASE are written over it), and the CPL is
CS.RPL, set the way the machine's interrupt delivery sets it (``engine.set_cpl``). Each field is range-checked
first (SDM vol. 3 §2.5 control registers, §2.2.1 EFER, §17.2 DR6/DR7, §3.3.7.1 canonical bases, §10.2.3 MXCSR).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import UcError
from unicorn import x86_const as X

from viridian.machine.unicorn import engine as E
from viridian.state import Fields, StateError

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

M64 = (1 << 64) - 1
GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))
_GPR = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in GPR_NAMES}
SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
_SEG = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in SEGS}
_CR = {f"cr{i}": getattr(X, f"UC_X86_REG_CR{i}") for i in (0, 2, 3, 4, 8)}
_DR = {f"dr{i}": getattr(X, f"UC_X86_REG_DR{i}") for i in range(8)}
# the MSRs Unicorn executes itself (vcpu.NATIVE_MSRS), by name; which must hold canonical addresses
MSRS = {"sysenter_cs": 0x174, "sysenter_esp": 0x175, "sysenter_eip": 0x176, "efer": 0xC000_0080,
        "star": 0xC000_0081, "lstar": 0xC000_0082, "cstar": 0xC000_0083, "sfmask": 0xC000_0084,
        "fs_base": 0xC000_0100, "gs_base": 0xC000_0101, "kernel_gs_base": 0xC000_0102, "tsc_aux": 0xC000_0103}
CANONICAL_MSRS = ("sysenter_esp", "sysenter_eip", "lstar", "cstar", "fs_base", "gs_base", "kernel_gs_base")
LOW32_MSRS = ("sysenter_cs", "sfmask", "tsc_aux")  # SDM vol. 4: bits 63:32 reserved
CR0_VALID = 0xE005_003F  # PE MP EM TS ET NE WP AM NW CD PG (SDM §2.5)
CR4_VALID = 0x7FFF | 0x1F7 << 16  # VME..SMXE (0-14), FSGSBASE PCIDE OSXSAVE, SMEP SMAP PKE CET PKS (16-24)
EFER_VALID = 0xFD01  # SCE LME LMA NXE SVME LMSLE FFXSR TCE (SDM §2.2.1, AMD APM)
RFLAGS_VALID = 0x3F_7FD7  # CF 1 PF AF ZF SF TF IF DF OF IOPL NT RF VM AC VIF VIP ID; bit 1 reads 1
MXCSR_VALID = 0xFFFF
_FP = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)]
_YMM = [getattr(X, f"UC_X86_REG_YMM{i}") for i in range(16)]
_X87 = {"fpcw": X.UC_X86_REG_FPCW, "fpsw": X.UC_X86_REG_FPSW, "fptag": X.UC_X86_REG_FPTAG,
        "fcs": X.UC_X86_REG_FCS, "fds": X.UC_X86_REG_FDS, "fop": X.UC_X86_REG_FOP}
_X87_64 = {"fip": X.UC_X86_REG_FIP, "fdp": X.UC_X86_REG_FDP}


def canonical(addr: int, la57: bool = False) -> bool:
    """SDM vol. 1 §3.3.7.1: bits 63:47 (63:56 with 5-level paging) all equal."""
    top = addr >> (56 if la57 else 47)
    return top in (0, (1 << (8 if la57 else 17)) - 1)


def save_cpu(uc: Any) -> dict[str, Any]:
    """Every named field (plain ints; YMM as 64 hex digits)."""
    out: dict[str, Any] = {n: int(uc.reg_read(r)) for n, r in _GPR.items()}
    out["rip"], out["rflags"] = int(uc.reg_read(X.UC_X86_REG_RIP)), int(uc.reg_read(X.UC_X86_REG_RFLAGS))
    out["segs"] = {n: int(uc.reg_read(r)) for n, r in _SEG.items()}
    out["gdtr"] = list(uc.reg_read(X.UC_X86_REG_GDTR))[1:3]
    out["idtr"] = list(uc.reg_read(X.UC_X86_REG_IDTR))[1:3]
    out["ldtr"] = list(uc.reg_read(X.UC_X86_REG_LDTR))
    out["tr"] = list(uc.reg_read(X.UC_X86_REG_TR))
    out["cr"] = {n: int(uc.reg_read(r)) for n, r in _CR.items()}
    out["dr"] = {n: int(uc.reg_read(r)) for n, r in _DR.items()}
    out["msrs"] = {n: int(uc.msr_read(i)) for n, i in MSRS.items()}
    x87: dict[str, Any] = {n: int(uc.reg_read(r)) for n, r in {**_X87, **_X87_64}.items()}
    x87["fp"] = [list(uc.reg_read(r)) for r in _FP]
    out["x87"] = x87
    out["mxcsr"] = int(uc.reg_read(X.UC_X86_REG_MXCSR))
    out["ymm"] = [f"{int(uc.reg_read(r)):064x}" for r in _YMM]
    return out


def _check(f: Fields, ram_size: int) -> dict[str, Any]:
    """Every field typed and in range, or StateError; returns the values to apply."""
    v: dict[str, Any] = {n: f.uint(n) for n in GPR_NAMES}
    cr = f.sub("cr")
    c = {n: cr.uint(n) for n in _CR}
    la57 = bool(c["cr4"] & 1 << 12)
    if c["cr0"] & ~CR0_VALID or (c["cr0"] >> 31 and not c["cr0"] & 1):
        raise StateError(f"{cr.where}.cr0: {c['cr0']:#x} has reserved bits or PG without PE")
    if c["cr4"] & ~CR4_VALID:
        raise StateError(f"{cr.where}.cr4: {c['cr4']:#x} has reserved bits")
    if c["cr3"] >> 52 or (c["cr0"] >> 31 and c["cr3"] & ~0xFFF & ((1 << 52) - 1) >= ram_size):
        raise StateError(f"{cr.where}.cr3: {c['cr3']:#x} is not a page table inside RAM")
    if c["cr8"] > 15:
        raise StateError(f"{cr.where}.cr8: {c['cr8']} is not a 4-bit priority")
    v["cr"] = c
    v["rip"], v["rflags"] = f.uint("rip"), f.uint("rflags")
    if not canonical(v["rip"], la57):
        raise StateError(f"{f.where}.rip: {v['rip']:#x} is not canonical")
    if v["rflags"] & ~RFLAGS_VALID or not v["rflags"] & 2:
        raise StateError(f"{f.where}.rflags: {v['rflags']:#x} has reserved bits")
    segs = f.sub("segs")
    v["segs"] = {n: segs.uint(n, 0, 0xFFFF) for n in SEGS}
    for name in ("gdtr", "idtr"):
        base, limit = f.uints(name, 2)
        if limit > 0xFFFF or not canonical(base, la57):
            raise StateError(f"{f.where}.{name}: base {base:#x} must be canonical, limit at most 0xffff")
        v[name] = (0, base, limit, 0)
    for name in ("ldtr", "tr"):
        sel, base, limit, attrs = f.uints(name, 4)
        if sel > 0xFFFF or limit > 0xFFFF_FFFF or attrs > 0xFFFF_FFFF or not canonical(base, la57):
            raise StateError(f"{f.where}.{name}: expected a 16-bit selector, canonical base, 32-bit limit/attributes")
        v[name] = (sel, base, limit, attrs)
    dr = f.sub("dr")
    v["dr"] = {n: dr.uint(n) for n in _DR}
    if v["dr"]["dr6"] >> 32 or v["dr"]["dr7"] >> 32:
        raise StateError(f"{dr.where}: DR6/DR7 bits 63:32 are reserved")
    msrs = f.sub("msrs")
    v["msrs"] = m = {n: msrs.uint(n) for n in MSRS}
    if m["efer"] & ~EFER_VALID:
        raise StateError(f"{msrs.where}.efer: {m['efer']:#x} has reserved bits")
    for n in CANONICAL_MSRS:
        if not canonical(m[n], la57):
            raise StateError(f"{msrs.where}.{n}: {m[n]:#x} is not canonical")
    for n in LOW32_MSRS:
        if m[n] >> 32:
            raise StateError(f"{msrs.where}.{n}: bits 63:32 are reserved")
    x87 = f.sub("x87")
    v["x87"] = {n: x87.uint(n, 0, 0xFFFF) for n in _X87} | {n: x87.uint(n) for n in _X87_64}
    fp = x87.seq("fp", 8)
    v["fp"] = [tuple(Fields({"m": r[0], "e": r[1]} if type(r) is list and len(r) == 2 else None,
                            f"{x87.where}.fp[{i}]").uint(k, 0, M64 if k == "m" else 0xFFFF) for k in ("m", "e"))
               for i, r in enumerate(fp)]
    v["mxcsr"] = f.uint("mxcsr", 0, MXCSR_VALID)
    ymm = f.seq("ymm", 16)
    v["ymm"] = [int.from_bytes(Fields({"y": y}, f"{f.where}.ymm[{i}]").blob("y", 32), "big")
                for i, y in enumerate(ymm)]
    return v


def load_cpu(vcpu: Vcpu, state: Any) -> None:
    """Check ``state`` completely, then apply it to ``vcpu``'s engine (a fresh 64-bit instance)."""
    f = Fields(state, f"vcpus[{vcpu.index}].cpu")
    v = _check(f, vcpu.m.ram_size)
    uc = vcpu.uc
    try:
        for name in ("gdtr", "idtr", "ldtr", "tr"):
            uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), v[name])
        c = v["cr"]
        uc.reg_write(X.UC_X86_REG_CR3, c["cr3"])
        uc.reg_write(X.UC_X86_REG_CR4, c["cr4"])
        uc.msr_write(E.EFER, v["msrs"]["efer"])
        uc.reg_write(X.UC_X86_REG_CR0, c["cr0"])
        for name in ("cr2", "cr8"):
            uc.reg_write(_CR[name], c[name])
        cpl = v["segs"]["cs"] & 3
        if cpl:
            off = E.hflags_offset()
            if off is None:
                raise StateError(f"{f.where}: this engine build cannot restore CPL {cpl}")
            E.set_cpl(uc, off, cpl)  # a CS/SS write cannot change Unicorn's hidden CPL (engine.py)
        for name in ("cs", "ss", "ds", "es"):
            uc.reg_write(_SEG[name], v["segs"][name])
        for name in ("fs", "gs"):
            _load_data_segment(vcpu, name, v["segs"][name], v)
        for name, index in MSRS.items():
            if name != "efer":
                uc.msr_write(index, v["msrs"][name])
        for name, reg in _DR.items():
            uc.reg_write(reg, v["dr"][name])
        uc.reg_write_batch([(_GPR[n], v[n]) for n in GPR_NAMES])
        uc.reg_write(X.UC_X86_REG_RFLAGS, v["rflags"])
        uc.reg_write(X.UC_X86_REG_RIP, v["rip"])
        for name, reg in {**_X87, **_X87_64}.items():
            if name != "fptag":
                uc.reg_write(reg, v["x87"][name])
        uc.reg_write(X.UC_X86_REG_FPTAG, v["x87"]["fptag"])
        for reg, (mant, exp) in zip(_FP, v["fp"], strict=True):
            uc.reg_write(reg, (mant, exp))
        uc.reg_write(X.UC_X86_REG_MXCSR, v["mxcsr"])
        for reg, value in zip(_YMM, v["ymm"], strict=True):
            uc.reg_write(reg, value)
    except UcError as exc:
        raise StateError(f"{f.where}: the engine refused the state ({exc})") from None
    uc.ctl_flush_tb()


def _load_data_segment(vcpu: Vcpu, name: str, sel: int, v: dict[str, Any]) -> None:
    """FS/GS: Unicorn loads the descriptor from the GDT/LDT, so it must be readable in RAM first (a null
    selector loads nothing); the engine then checks type, DPL and presence itself."""
    if sel & 0xFFFC:
        table = v["ldtr"] if sel & 4 else v["gdtr"]
        base, limit = table[1], table[2]
        if (sel & ~7) + 7 > limit or vcpu.read_virtual(base + (sel & ~7), 8) is None:
            raise StateError(f"vcpus[{vcpu.index}].cpu.segs.{name}: selector {sel:#x} is not in a readable "
                             "descriptor table")
    vcpu.uc.reg_write(_SEG[name], sel)


def check_code_segment(v: Vcpu) -> None:
    """In a 64-bit Unicorn instance a CS write sets only the selector (see above), so a vCPU running
    compatibility-mode code (EFER.LMA with CS.L = 0, SDM vol. 3 §5.2.1) cannot be restored: refused here."""
    uc = v.uc
    cs = int(uc.reg_read(X.UC_X86_REG_CS))
    if not int(uc.msr_read(E.EFER)) & 0x400 or not cs & 0xFFFC:
        return
    table = uc.reg_read(X.UC_X86_REG_LDTR if cs & 4 else X.UC_X86_REG_GDTR)
    desc = v.read_virtual(table[1] + (cs & ~7), 8)
    if desc is not None and not int.from_bytes(desc, "little") >> 53 & 1:
        raise StateError(f"vCPU {v.index} runs compatibility-mode (32-bit) code: a snapshot cannot restore it")
