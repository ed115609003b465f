"""Architectural MSRs the engine (Unicorn / QEMU TCG) does not provide but guests touch.

Contract: :data:`ARCH_MSRS` is an :class:`~msr.registry.MsrTable` keyed on a per-vCPU
:class:`ArchMsrState`. It answers only the indices declared below. Every other index — EFER, STAR,
LSTAR, CSTAR, SFMASK, FS/GS base, KERNEL_GS_BASE, SYSENTER_*, TSC_AUX, ... — is ``NOT_MINE``, so the
machine's engine-native fallback (the last link of its MsrChain before #GP) handles it.

Not provided on purpose: IA32_SPEC_CTRL / PRED_CMD / ARCH_CAPABILITIES (no speculation controls are
modelled; CPUID synthesis must not advertise them, and then guests do not touch them), MCG_CTL and
machine-check banks (MCG_CAP reports 0 banks), CPUID faulting (PLATFORM_INFO bit 31 is 0).

CPUID synthesis must agree with :class:`ArchFeatures` (each gate mirrors a CPUID bit, as KVM's
enforce_cpuid) and with :attr:`ArchMsrState.limit_cpuid_maxval` (IA32_MISC_ENABLE bit 22).
Citations: "SDM4" = Intel SDM vol. 4 Table 2-2 (architectural MSRs); "SDM3" = Intel SDM vol. 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from msr.apic import LocalApicPort
from msr.faults import GuestFault, gp
from msr.registry import MsrTable

MASK64: Final = (1 << 64) - 1
APIC_BASE_DEFAULT: Final = 0xFEE0_0000
APIC_BASE_BSP: Final = 1 << 8
APIC_BASE_EXTD: Final = 1 << 10
APIC_BASE_EN: Final = 1 << 11

MISC_FAST_STRINGS: Final = 1 << 0
MISC_AUTO_THERMAL: Final = 1 << 3
MISC_PERFMON_AVAILABLE: Final = 1 << 7  # RO, 0: no architectural PMU is offered
MISC_BTS_UNAVAILABLE: Final = 1 << 11  # RO
MISC_PEBS_UNAVAILABLE: Final = 1 << 12  # RO
MISC_EIST: Final = 1 << 16  # Enhanced Intel SpeedStep enable (stored; no P-states are modelled)
MISC_MONITOR: Final = 1 << 18  # ENABLE MONITOR FSM (stored; MONITOR/MWAIT are not offered in CPUID)
MISC_LIMIT_CPUID: Final = 1 << 22
MISC_XTPR_DISABLE: Final = 1 << 23
MISC_XD_DISABLE: Final = 1 << 34  # stored, like KVM (NX stays offered)
MISC_RW: Final = (MISC_FAST_STRINGS | MISC_AUTO_THERMAL | MISC_EIST | MISC_MONITOR | MISC_LIMIT_CPUID
                  | MISC_XTPR_DISABLE | MISC_XD_DISABLE)
MISC_RO: Final = MISC_PERFMON_AVAILABLE | MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE
MISC_ENABLE_DEFAULT: Final = MISC_FAST_STRINGS | MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE

MTRR_TYPES: Final = frozenset({0, 1, 4, 5, 6})  # UC, WC, WT, WP, WB (SDM3 §13.11.2)
PAT_TYPES: Final = frozenset({0, 1, 4, 5, 6, 7})  # + UC- (SDM3 §13.12.2)
PAT_DEFAULT: Final = 0x0007_0406_0007_0406  # SDM3 Table 13-12 (power-up value)
MTRR_VAR_COUNT: Final = 8
MTRRCAP_VALUE: Final = 0x500 | MTRR_VAR_COUNT  # WC + fixed supported, 8 variable (KVM's value)
MTRR_FIXED: Final = (0x250, 0x258, 0x259, *range(0x268, 0x270))
MTRR_DEF_TYPE_FE: Final = 1 << 10
MTRR_DEF_TYPE_E: Final = 1 << 11
MTRR_VALID: Final = 1 << 11  # PHYSMASKn bit 11
FEATURE_CONTROL_LOCK: Final = 1 << 0
MICROCODE_REV_DEFAULT: Final = 0x1_0000_0000  # KVM: microcode revision 1 in bits 63:32
BUS_HZ: Final = 100_000_000  # MSR_PLATFORM_INFO ratios are in units of 100 MHz


class TscClock(Protocol):
    """The partition clock (``viridian.clock.VirtualClock`` satisfies it; msr/ does not import viridian)."""

    @property
    def tsc_hz(self) -> int: ...

    def tsc(self) -> int: ...


class ArchApic(LocalApicPort, Protocol):
    """What the architectural MSRs need of the local APIC beyond :class:`LocalApicPort`."""

    tsc_offset: int

    @property
    def hw_enabled(self) -> bool: ...

    def set_mode(self, enabled: bool, x2apic: bool) -> None: ...

    def read_tsc_deadline(self) -> int: ...

    def write_tsc_deadline(self, value: int) -> None: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class ArchFeatures:
    """CPUID-visible features the MSRs depend on (the machine derives this from its CPUID)."""

    x2apic: bool = True  # CPUID.01H:ECX[21]
    tsc_deadline: bool = True  # CPUID.01H:ECX[24]
    tsc_adjust: bool = True  # CPUID.(07H,0):EBX[1]
    mtrr: bool = True  # CPUID.01H:EDX[12]
    pat: bool = True  # CPUID.01H:EDX[16]
    aperfmperf: bool = True  # CPUID.06H:ECX[0]
    maxphyaddr: int = 40  # CPUID.80000008H:EAX[7:0]; QEMU TCG's default


@dataclass
class ArchMsrState:
    """Per-vCPU architectural MSR state. The guest TSC offset lives in the APIC (its deadline timer
    compares against the guest TSC), so there is a single source of truth."""

    vp_index: int
    apic: ArchApic
    clock: TscClock
    features: ArchFeatures = field(default_factory=ArchFeatures)
    apic_base_address: int = APIC_BASE_DEFAULT
    bsp: bool = False
    tsc_adjust: int = 0
    misc_enable: int = MISC_ENABLE_DEFAULT
    microcode_rev: int = MICROCODE_REV_DEFAULT
    mtrr_def_type: int = 0
    mtrr_var: list[int] = field(default_factory=lambda: [0] * (2 * MTRR_VAR_COUNT))
    mtrr_fixed: dict[int, int] = field(default_factory=lambda: dict.fromkeys(MTRR_FIXED, 0))
    pat: int = PAT_DEFAULT
    mcg_status: int = 0
    mperf_offset: int = 0
    aperf_offset: int = 0

    def __post_init__(self) -> None:
        self.bsp = self.vp_index == 0

    def reset(self) -> None:
        """RESET values (SDM3 Table 10-1); the partition TSC itself is the machine's business."""
        fresh = ArchMsrState(self.vp_index, self.apic, self.clock, self.features)
        for name in ("apic_base_address", "bsp", "tsc_adjust", "misc_enable", "mtrr_def_type", "mtrr_var",
                     "mtrr_fixed", "pat", "mcg_status", "mperf_offset", "aperf_offset"):
            setattr(self, name, getattr(fresh, name))
        self.apic.reset()

    # -- snapshots: plain data out, every field type- and range-checked in (ValueError otherwise) ----------
    def save_state(self) -> dict[str, Any]:
        return {"apic_base_address": self.apic_base_address, "bsp": self.bsp, "tsc_adjust": self.tsc_adjust,
                "misc_enable": self.misc_enable, "microcode_rev": self.microcode_rev,
                "mtrr_def_type": self.mtrr_def_type, "mtrr_var": list(self.mtrr_var),
                "mtrr_fixed": [self.mtrr_fixed[i] for i in MTRR_FIXED], "pat": self.pat,
                "mcg_status": self.mcg_status, "mperf_offset": self.mperf_offset, "aperf_offset": self.aperf_offset}

    def load_state(self, state: dict[str, Any]) -> None:
        """APIC base page-aligned below MAXPHYADDR (SDM3 §11.4.4), PAT and MTRR types valid (§13.11-12)."""
        where = f"arch[{self.vp_index}]"
        if not isinstance(state, dict):
            raise ValueError(f"{where}: expected an object")

        def u64(key: str, v: Any = None) -> int:
            v = state.get(key) if v is None else v
            if type(v) is not int or not 0 <= v <= MASK64:
                raise ValueError(f"{where}.{key}: expected a 64-bit unsigned integer")
            return v

        def u64s(key: str, n: int) -> list[int]:
            v = state.get(key)
            if type(v) is not list or len(v) != n:
                raise ValueError(f"{where}.{key}: expected {n} integers")
            return [u64(key, x) for x in v]

        base, pat, def_type = u64("apic_base_address"), u64("pat"), u64("mtrr_def_type")
        if base & ~self.phys_mask:
            raise ValueError(f"{where}.apic_base_address: {base:#x} is not a page below MAXPHYADDR")
        if any((pat >> (8 * i)) & 0xFF not in PAT_TYPES for i in range(8)):
            raise ValueError(f"{where}.pat: invalid memory type in {pat:#x}")
        if def_type & 0xFF not in MTRR_TYPES or def_type & ~0xCFF:
            raise ValueError(f"{where}.mtrr_def_type: invalid value {def_type:#x}")
        if type(state.get("bsp")) is not bool:
            raise ValueError(f"{where}.bsp: expected true/false")
        var, fixed = u64s("mtrr_var", 2 * MTRR_VAR_COUNT), u64s("mtrr_fixed", len(MTRR_FIXED))
        values = [u64(k) for k in ("tsc_adjust", "misc_enable", "microcode_rev", "mcg_status", "mperf_offset",
                                   "aperf_offset")]
        self.apic_base_address, self.bsp, self.pat, self.mtrr_def_type = base, state["bsp"], pat, def_type
        self.mtrr_var, self.mtrr_fixed = var, dict(zip(MTRR_FIXED, fixed, strict=True))
        (self.tsc_adjust, self.misc_enable, self.microcode_rev, self.mcg_status, self.mperf_offset,
         self.aperf_offset) = values

    @property
    def phys_mask(self) -> int:
        """Bits 12..MAXPHYADDR-1 (page-frame bits of physical addresses)."""
        return ((1 << self.features.maxphyaddr) - 1) & ~0xFFF

    def guest_tsc(self) -> int:
        """What RDTSC returns on this vCPU."""
        return (self.clock.tsc() + self.apic.tsc_offset) & MASK64

    @property
    def limit_cpuid_maxval(self) -> bool:
        """IA32_MISC_ENABLE[22]: CPUID leaf 0 must report EAX <= 2 (SDM4)."""
        return bool(self.misc_enable & MISC_LIMIT_CPUID)

    def apic_base(self) -> int:
        apic = self.apic
        return (self.apic_base_address | (APIC_BASE_BSP if self.bsp else 0)
                | (APIC_BASE_EXTD if apic.x2apic else 0) | (APIC_BASE_EN if apic.hw_enabled else 0))


ARCH_MSRS: MsrTable[ArchMsrState] = MsrTable("arch")
T = ARCH_MSRS


def _fault(reason: str) -> GuestFault:
    return GuestFault(gp(reason))


# -- local APIC ------------------------------------------------------------------------------------
@T.reader(0x1B, name="IA32_APIC_BASE", cite="SDM4; SDM3 §11.4.4")
def _rd_apic_base(s: ArchMsrState) -> int:
    return s.apic_base()


@T.writer(0x1B, name="IA32_APIC_BASE", cite="SDM3 §11.12.5.1 state transitions")
def _wr_apic_base(s: ArchMsrState, v: int) -> None:
    reserved = 0x2FF | (MASK64 & ~(s.phys_mask | 0xFFF)) | (0 if s.features.x2apic else APIC_BASE_EXTD)
    if v & reserved:
        raise _fault(f"IA32_APIC_BASE reserved bits {v & reserved:#x}")
    new = (bool(v & APIC_BASE_EN), bool(v & APIC_BASE_EXTD))
    old = (s.apic.hw_enabled, s.apic.x2apic)
    if new == (False, True):
        raise _fault("IA32_APIC_BASE: EN=0 with EXTD=1 is invalid")
    if new != old and (old, new) in (((False, False), (True, True)), ((True, True), (True, False))):
        raise _fault("IA32_APIC_BASE: disabled->x2APIC and x2APIC->xAPIC are illegal transitions")
    s.apic_base_address = v & s.phys_mask
    s.bsp = bool(v & APIC_BASE_BSP)  # R/W in SDM4; KVM keeps what the guest writes
    s.apic.set_mode(*new)


@T.reader(0x6E0, name="IA32_TSC_DEADLINE", gate=lambda s: s.features.tsc_deadline, cite="SDM3 §11.5.4.1")
def _rd_tsc_deadline(s: ArchMsrState) -> int:
    return s.apic.read_tsc_deadline()


@T.writer(0x6E0, name="IA32_TSC_DEADLINE", gate=lambda s: s.features.tsc_deadline, cite="SDM3 §11.5.4.1")
def _wr_tsc_deadline(s: ArchMsrState, v: int) -> None:
    s.apic.write_tsc_deadline(v)


# -- time stamp counter ----------------------------------------------------------------------------
@T.reader(0x10, name="IA32_TIME_STAMP_COUNTER", cite="SDM4")
def _rd_tsc(s: ArchMsrState) -> int:
    return s.guest_tsc()


@T.writer(0x10, name="IA32_TIME_STAMP_COUNTER", cite="SDM3 §18.17.3: a TSC write moves TSC_ADJUST too")
def _wr_tsc(s: ArchMsrState, v: int) -> None:
    delta = (v - s.guest_tsc()) & MASK64
    s.apic.tsc_offset = (s.apic.tsc_offset + delta) & MASK64
    s.tsc_adjust = (s.tsc_adjust + delta) & MASK64


@T.reader(0x3B, name="IA32_TSC_ADJUST", gate=lambda s: s.features.tsc_adjust, cite="SDM4")
def _rd_tsc_adjust(s: ArchMsrState) -> int:
    return s.tsc_adjust


@T.writer(0x3B, name="IA32_TSC_ADJUST", gate=lambda s: s.features.tsc_adjust, cite="SDM3 §18.17.3")
def _wr_tsc_adjust(s: ArchMsrState, v: int) -> None:
    delta = (v - s.tsc_adjust) & MASK64
    s.tsc_adjust = v
    s.apic.tsc_offset = (s.apic.tsc_offset + delta) & MASK64


@T.reader(0xE7, name="IA32_MPERF", gate=lambda s: s.features.aperfmperf, cite="SDM4: counts at TSC rate")
def _rd_mperf(s: ArchMsrState) -> int:
    return (s.clock.tsc() + s.mperf_offset) & MASK64


@T.writer(0xE7, name="IA32_MPERF", gate=lambda s: s.features.aperfmperf, cite="SDM4 (R/W)")
def _wr_mperf(s: ArchMsrState, v: int) -> None:
    s.mperf_offset = (v - s.clock.tsc()) & MASK64


@T.reader(0xE8, name="IA32_APERF", gate=lambda s: s.features.aperfmperf, cite="SDM4: no turbo, = MPERF rate")
def _rd_aperf(s: ArchMsrState) -> int:
    return (s.clock.tsc() + s.aperf_offset) & MASK64


@T.writer(0xE8, name="IA32_APERF", gate=lambda s: s.features.aperfmperf, cite="SDM4 (R/W)")
def _wr_aperf(s: ArchMsrState, v: int) -> None:
    s.aperf_offset = (v - s.clock.tsc()) & MASK64


@T.reader(0xCE, name="MSR_PLATFORM_INFO", cite="SDM4 (Nehalem+): bits 15:8 max non-turbo ratio x 100 MHz")
def _rd_platform_info(s: ArchMsrState) -> int:
    return (min(s.clock.tsc_hz // BUS_HZ, 0xFF)) << 8


# -- identification and control --------------------------------------------------------------------
@T.reader(0x17, name="IA32_PLATFORM_ID", cite="SDM4: RO; platform ID bits 52:50 = 0")
def _rd_platform_id(s: ArchMsrState) -> int:
    return 0


@T.reader(0x8B, name="IA32_BIOS_SIGN_ID", cite="KVM: microcode revision in 63:32, guest writes ignored")
def _rd_bios_sign_id(s: ArchMsrState) -> int:
    return s.microcode_rev


@T.writer(0x8B, name="IA32_BIOS_SIGN_ID", cite="KVM: guest writes ignored")
def _wr_bios_sign_id(s: ArchMsrState, v: int) -> None:
    pass


@T.writer(0x79, name="IA32_BIOS_UPDT_TRIG", cite="KVM: microcode update trigger writes ignored")
def _wr_bios_updt_trig(s: ArchMsrState, v: int) -> None:
    pass


@T.reader(0x3A, name="IA32_FEATURE_CONTROL", cite="SDM4: locked by firmware, VMX/SMX not enabled")
def _rd_feature_control(s: ArchMsrState) -> int:
    return FEATURE_CONTROL_LOCK  # writes: no writer -> #GP, as WRMSR to a locked register


@T.reader(0x1A0, name="IA32_MISC_ENABLE", cite="SDM4; KVM: BTS/PEBS unavailable")
def _rd_misc_enable(s: ArchMsrState) -> int:
    return s.misc_enable


@T.writer(0x1A0, name="IA32_MISC_ENABLE", reserved=MASK64 & ~(MISC_RW | MISC_RO), cite="SDM4")
def _wr_misc_enable(s: ArchMsrState, v: int) -> None:
    s.misc_enable = (v & MISC_RW) | (s.misc_enable & MISC_RO)  # read-only bits keep their value


@T.reader(0x179, name="IA32_MCG_CAP", cite="SDM4: 0 banks, no MCG_CTL_P/CMCI_P/LMCE_P")
def _rd_mcg_cap(s: ArchMsrState) -> int:
    return 0


@T.reader(0x17A, name="IA32_MCG_STATUS", cite="SDM4")
def _rd_mcg_status(s: ArchMsrState) -> int:
    return s.mcg_status


@T.writer(0x17A, name="IA32_MCG_STATUS", reserved=MASK64 & ~0b111, cite="SDM4: RIPV/EIPV/MCIP; LMCE_S absent")
def _wr_mcg_status(s: ArchMsrState, v: int) -> None:
    s.mcg_status = v


# -- memory types ----------------------------------------------------------------------------------
def _check_types(v: int, valid: frozenset[int], what: str) -> None:
    for i in range(8):
        if (v >> (8 * i)) & 0xFF not in valid:
            raise _fault(f"{what}: invalid memory type {(v >> (8 * i)) & 0xFF:#x} in byte {i}")


@T.reader(0x277, name="IA32_PAT", gate=lambda s: s.features.pat, cite="SDM3 §13.12.2")
def _rd_pat(s: ArchMsrState) -> int:
    return s.pat


@T.writer(0x277, name="IA32_PAT", gate=lambda s: s.features.pat, cite="SDM3 §13.12.2: reserved types -> #GP")
def _wr_pat(s: ArchMsrState, v: int) -> None:
    _check_types(v, PAT_TYPES, "IA32_PAT")
    s.pat = v


def _mtrr_gate(s: ArchMsrState) -> bool:
    return s.features.mtrr


@T.reader(0xFE, name="IA32_MTRRCAP", gate=_mtrr_gate, cite="SDM3 §13.11.2.1; KVM: 8 variable, fixed, WC")
def _rd_mtrrcap(s: ArchMsrState) -> int:
    return MTRRCAP_VALUE


@T.reader(0x2FF, name="IA32_MTRR_DEF_TYPE", gate=_mtrr_gate, cite="SDM3 §13.11.2.1")
def _rd_mtrr_def_type(s: ArchMsrState) -> int:
    return s.mtrr_def_type


@T.writer(0x2FF, name="IA32_MTRR_DEF_TYPE", gate=_mtrr_gate, reserved=MASK64 & ~0xCFF, cite="SDM3 §13.11.2.1")
def _wr_mtrr_def_type(s: ArchMsrState, v: int) -> None:
    if v & 0xFF not in MTRR_TYPES:
        raise _fault(f"IA32_MTRR_DEF_TYPE: invalid type {v & 0xFF:#x}")
    s.mtrr_def_type = v


def _declare_var_mtrr(n: int) -> None:
    """IA32_MTRR_PHYSBASEn / PHYSMASKn (SDM3 §13.11.2.3): type in base[7:0], valid in mask[11]."""

    def rd(s: ArchMsrState) -> int:
        return s.mtrr_var[n]

    def wr(s: ArchMsrState, v: int) -> None:
        if n % 2 == 0:
            if v & ~(s.phys_mask | 0xFF) & MASK64:
                raise _fault(f"IA32_MTRR_PHYSBASE{n // 2}: reserved bits set")
            if v & 0xFF not in MTRR_TYPES:
                raise _fault(f"IA32_MTRR_PHYSBASE{n // 2}: invalid type {v & 0xFF:#x}")
        elif v & ~(s.phys_mask | MTRR_VALID) & MASK64:
            raise _fault(f"IA32_MTRR_PHYSMASK{n // 2}: reserved bits set")
        s.mtrr_var[n] = v

    name = f"IA32_MTRR_PHYS{'MASK' if n % 2 else 'BASE'}{n // 2}"
    T.reader(0x200 + n, name=name, gate=_mtrr_gate, cite="SDM3 §13.11.2.3")(rd)
    T.writer(0x200 + n, name=name, gate=_mtrr_gate, cite="SDM3 §13.11.2.3")(wr)


def _declare_fixed_mtrr(index: int) -> None:
    """Fixed-range MTRRs (SDM3 §13.11.2.2): eight type bytes each."""

    def rd(s: ArchMsrState) -> int:
        return s.mtrr_fixed[index]

    def wr(s: ArchMsrState, v: int) -> None:
        _check_types(v, MTRR_TYPES, f"fixed MTRR {index:#x}")
        s.mtrr_fixed[index] = v

    T.reader(index, name=f"IA32_MTRR_FIX_{index:#x}", gate=_mtrr_gate, cite="SDM3 §13.11.2.2")(rd)
    T.writer(index, name=f"IA32_MTRR_FIX_{index:#x}", gate=_mtrr_gate, cite="SDM3 §13.11.2.2")(wr)


for _n in range(2 * MTRR_VAR_COUNT):
    _declare_var_mtrr(_n)
for _index in MTRR_FIXED:
    _declare_fixed_mtrr(_index)

__all__ = ["ARCH_MSRS", "ArchApic", "ArchFeatures", "ArchMsrState", "TscClock"]
