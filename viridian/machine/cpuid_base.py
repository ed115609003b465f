"""The architectural CPUID leaves the machine answers (engine-free): only what the engine executes.

Intel-flavoured (the hypercall instruction is VMCALL): family 6, SSE..SSE4.2, POPCNT, CX16, no AVX/XSAVE,
no PCID, no speculation controls; x2APIC, TSC-deadline and the hypervisor bit (CPUID.1:ECX[31]) set.
Topology: one package of ``vcpus`` cores, one thread each (leaf 1 EBX[23:16] and HTT, leaf 0xB; APIC IDs are
the vCPU indexes), so a kernel calibrates its delay loop once and lets the other cores copy it (SDM vol. 3
§8.9.4, "Algorithm for Three-Level Mappings of APIC_ID").
"""

from __future__ import annotations

from typing import Final

from viridian.partition.cpuid import CpuidRegs

MAX_BASIC: Final = 0xB
MAX_EXT: Final = 0x8000_0008
VENDOR: Final = (0x756E_6547, 0x6C65_746E, 0x4965_6E69)  # "GenuineIntel" in EBX, ECX, EDX order
FAMILY_MODEL: Final = 0x000306A9  # family 6, model 0x3A (Ivy Bridge-class feature set)

ECX1: Final = (1 << 0 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 20 | 1 << 21 | 1 << 23 | 1 << 24 | 1 << 31)
# SSE3, SSSE3, CX16, SSE4.1, SSE4.2, x2APIC, POPCNT, TSC-deadline, hypervisor
EDX1: Final = 0x0789_FBFF & ~(1 << 7 | 1 << 14 | 1 << 18 | 1 << 21 | 1 << 22 | 1 << 27)
# FPU VME DE PSE TSC MSR PAE CX8 APIC SEP MTRR PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2 (no MCE/MCA/PN/DS/ACPI/SS)
EXT_EDX: Final = 1 << 11 | 1 << 20 | 1 << 26 | 1 << 27 | 1 << 29  # SYSCALL NX 1GB-pages RDTSCP LM
EXT_ECX: Final = 1 << 0 | 1 << 5  # LAHF/SAHF, LZCNT/ABM
INVARIANT_TSC: Final = 1 << 8  # CPUID.80000007H:EDX[8]


def base_leaf(leaf: int, subleaf: int, apic_id: int, vcpus: int, *, invariant_tsc: bool = True,
              limit_maxval: bool = False) -> CpuidRegs:
    """The architectural leaf ``leaf`` (zeros for anything not implemented)."""
    if leaf == 0:
        return CpuidRegs(2 if limit_maxval else MAX_BASIC, VENDOR[0], VENDOR[1], VENDOR[2])
    if leaf == 1:
        ids = min(1 << _core_shift(vcpus), 0xFF)  # addressable logical processor IDs in the package
        htt = 1 << 28 if vcpus > 1 else 0
        return CpuidRegs(FAMILY_MODEL, (apic_id & 0xFF) << 24 | ids << 16 | 8 << 8, ECX1, EDX1 | htt)
    if leaf == 6:
        return CpuidRegs(0, 0, 1, 0)  # APERF/MPERF
    if leaf == 7 and subleaf == 0:
        return CpuidRegs(0, 1 << 1, 0, 0)  # TSC_ADJUST
    if leaf == 0xB:  # subleaf 0: SMT level (1 thread, shift 0); 1: core level (vcpus cores); then invalid
        if subleaf == 0:
            return CpuidRegs(0, 1, 1 << 8, apic_id)
        if subleaf == 1:
            return CpuidRegs(_core_shift(vcpus), vcpus & 0xFFFF, 1 | 2 << 8, apic_id)
        return CpuidRegs(0, 0, subleaf & 0xFF, apic_id)
    if leaf == 0x8000_0000:
        return CpuidRegs(MAX_EXT, 0, 0, 0)
    if leaf == 0x8000_0001:
        return CpuidRegs(0, 0, EXT_ECX, EXT_EDX)
    if leaf in (0x8000_0002, 0x8000_0003, 0x8000_0004):
        text = b"viridian virtual CPU".ljust(48, b"\0")[(leaf - 0x8000_0002) * 16 :][:16]
        return CpuidRegs(*(int.from_bytes(text[i : i + 4], "little") for i in range(0, 16, 4)))
    if leaf == 0x8000_0007:
        return CpuidRegs(0, 0, 0, INVARIANT_TSC if invariant_tsc else 0)
    if leaf == 0x8000_0008:
        return CpuidRegs(0x3028, 0, max(vcpus - 1, 0) & 0xFF, 0)  # 40-bit physical, 48-bit virtual
    return CpuidRegs(0, 0, 0, 0)


def _core_shift(vcpus: int) -> int:
    """Bits of the APIC ID that number the cores of the package: ceil(log2(vcpus))."""
    return max(vcpus - 1, 0).bit_length()
