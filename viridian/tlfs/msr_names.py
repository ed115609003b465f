"""Names of MSR indices for reports and --trace: Hyper-V's (HvMsr, TLFS App. C), x2APIC registers (SDM vol. 3
§10.12.1.2) and the architectural MSRs the machine models."""

from __future__ import annotations

from viridian.tlfs.msrs import HvMsr

ARCH_MSR_NAMES = {0x1B: "IA32_APIC_BASE", 0x10: "IA32_TIME_STAMP_COUNTER", 0x6E0: "IA32_TSC_DEADLINE",
                  0xC0000080: "IA32_EFER", 0xC0000100: "IA32_FS_BASE", 0xC0000101: "IA32_GS_BASE",
                  0xC0000102: "IA32_KERNEL_GS_BASE", 0x277: "IA32_PAT"}
X2APIC_NAMES = {0x802: "ID", 0x803: "VERSION", 0x808: "TPR", 0x80B: "EOI", 0x80F: "SVR", 0x830: "ICR",
                0x832: "LVT_TIMER", 0x838: "TIMER_INITIAL", 0x839: "TIMER_CURRENT", 0x83E: "TIMER_DIVIDE",
                0x83F: "SELF_IPI"}


def msr_name(index: int) -> str:
    """``HV_X64_MSR_<name>``, ``x2APIC <register>``, an architectural name, or ``MSR 0x...``."""
    try:
        return "HV_X64_MSR_" + HvMsr(index).name
    except ValueError:
        pass
    if index in X2APIC_NAMES:
        return "x2APIC " + X2APIC_NAMES[index]
    if 0x800 <= index <= 0x8FF:
        return f"x2APIC {(index - 0x800) << 4:#05x}"
    return ARCH_MSR_NAMES.get(index, f"MSR {index:#x}")
