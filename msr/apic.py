"""The local-APIC interface MSR providers route to (x2APIC MSRs, Hyper-V EOI/ICR/TPR), engine-free.

Register offsets are the xAPIC MMIO offsets (Intel SDM vol. 3 table 11-1); the x2APIC MSR for offset
``off`` is ``0x800 + off // 16`` (SDM §11.12.1.2).
"""

from __future__ import annotations

from typing import Protocol

APIC_ID = 0x20
APIC_VERSION = 0x30
APIC_TPR = 0x80
APIC_APR = 0x90
APIC_PPR = 0xA0
APIC_EOI = 0xB0
APIC_RRD = 0xC0
APIC_LDR = 0xD0
APIC_DFR = 0xE0
APIC_SVR = 0xF0
APIC_ISR = 0x100  # 8 registers, 0x100..0x170
APIC_TMR = 0x180
APIC_IRR = 0x200
APIC_ESR = 0x280
APIC_LVT_CMCI = 0x2F0
APIC_ICR_LOW = 0x300
APIC_ICR_HIGH = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_INITIAL = 0x380
APIC_TIMER_CURRENT = 0x390
APIC_TIMER_DIVIDE = 0x3E0
APIC_SELF_IPI = 0x3F0  # x2APIC only (MSR 0x83F)

X2APIC_MSR_BASE = 0x800
X2APIC_MSR_LAST = 0x8FF


class LocalApicPort(Protocol):
    """What MSR providers and the Hyper-V model need from a local APIC."""

    @property
    def x2apic(self) -> bool: ...

    def read_register(self, offset: int) -> int:
        """32-bit register read at an xAPIC offset (raises GuestFault for invalid ones in x2APIC mode)."""
        ...

    def write_register(self, offset: int, value: int) -> None: ...

    def eoi(self) -> None: ...

    def write_icr(self, value: int) -> None:
        """64-bit ICR write (high dword = destination): sends the IPI."""
        ...

    def read_icr(self) -> int: ...

    def get_tpr(self) -> int: ...

    def set_tpr(self, value: int) -> None: ...

    def assert_interrupt(self, vector: int, level: bool = False) -> bool:
        """Raise a fixed interrupt (SynIC, stimer direct mode); False if lost (APIC software-disabled)."""
        ...
