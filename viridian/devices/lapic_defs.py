"""Local APIC field layouts and constants (Intel SDM vol. 3 ch. 11), shared by the APIC, timer and bus.

Register offsets themselves live in :mod:`msr.apic` (the interface the MSR providers route to).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from msr.apic import (
    APIC_LVT_CMCI,
    APIC_LVT_ERROR,
    APIC_LVT_LINT0,
    APIC_LVT_LINT1,
    APIC_LVT_PERF,
    APIC_LVT_THERMAL,
    APIC_LVT_TIMER,
)

MASK32: Final = 0xFFFF_FFFF
MASK64: Final = (1 << 64) - 1

# §11.4.8 version register: 0x14 = integrated APIC (KVM's value); bits 23:16 = number of LVT entries - 1.
# Bit 24 (EOI-broadcast suppression) is not offered, so SVR bit 12 stays reserved.
APIC_VERSION_ID: Final = 0x14
XAPIC_BROADCAST: Final = 0xFF
X2APIC_BROADCAST: Final = 0xFFFF_FFFF

# §11.9 spurious-interrupt vector register
SVR_VECTOR: Final = 0xFF
SVR_ENABLE: Final = 1 << 8
SVR_FOCUS_DISABLE: Final = 1 << 9
SVR_WRITABLE: Final = SVR_VECTOR | SVR_ENABLE | SVR_FOCUS_DISABLE
SVR_RESET: Final = 0xFF  # §11.4.7.1

# §11.5.1 local vector table entries
LVT_VECTOR: Final = 0xFF
LVT_DELIVERY_MODE: Final = 0x700
LVT_DELIVERY_STATUS: Final = 1 << 12  # read-only, always idle here
LVT_POLARITY: Final = 1 << 13
LVT_REMOTE_IRR: Final = 1 << 14  # read-only
LVT_LEVEL: Final = 1 << 15
LVT_MASKED: Final = 1 << 16
LVT_TIMER_MODE: Final = 3 << 17
LVT_TIMER_MODE_SHIFT: Final = 17

# Writable bits of each LVT entry (Figure 11-8); read-only bits (status, remote IRR) are silently dropped.
LVT_WRITABLE: Final[dict[int, int]] = {
    APIC_LVT_TIMER: LVT_VECTOR | LVT_MASKED | LVT_TIMER_MODE,
    APIC_LVT_THERMAL: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
    APIC_LVT_PERF: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
    APIC_LVT_LINT0: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_POLARITY | LVT_LEVEL | LVT_MASKED,
    APIC_LVT_LINT1: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_POLARITY | LVT_LEVEL | LVT_MASKED,
    APIC_LVT_ERROR: LVT_VECTOR | LVT_MASKED,
    APIC_LVT_CMCI: LVT_VECTOR | LVT_DELIVERY_MODE | LVT_MASKED,
}
LVT_READ_ONLY: Final = LVT_DELIVERY_STATUS | LVT_REMOTE_IRR


class TimerMode(IntEnum):
    """LVT timer bits 18:17 (§11.5.4, Table 11-2); 3 is reserved (the timer does not run, like KVM)."""

    ONE_SHOT = 0
    PERIODIC = 1
    TSC_DEADLINE = 2
    RESERVED = 3


class DeliveryMode(IntEnum):
    """ICR / LVT bits 10:8 (§11.6.1)."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    RESERVED3 = 3
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7  # LVT only


class Shorthand(IntEnum):
    """ICR bits 19:18 (§11.6.1)."""

    NONE = 0
    SELF = 1
    ALL_INCLUDING_SELF = 2
    ALL_EXCLUDING_SELF = 3


# §11.6.1 interrupt command register (low dword)
ICR_VECTOR: Final = 0xFF
ICR_DELIVERY_MODE: Final = 0x700
ICR_DEST_LOGICAL: Final = 1 << 11
ICR_DELIVERY_STATUS: Final = 1 << 12
ICR_LEVEL_ASSERT: Final = 1 << 14
ICR_TRIGGER_LEVEL: Final = 1 << 15
ICR_SHORTHAND: Final = 3 << 18
ICR_LOW_WRITABLE: Final = (
    ICR_VECTOR | ICR_DELIVERY_MODE | ICR_DEST_LOGICAL | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL | ICR_SHORTHAND
)
ICR_HIGH_XAPIC_WRITABLE: Final = 0xFF00_0000  # destination field, bits 63:56
# §11.12.9: in x2APIC mode the ICR is one 64-bit register; bits 12, 13, 16-17, 20-31 are reserved.
X2APIC_ICR_RESERVED: Final = MASK32 & ~ICR_LOW_WRITABLE

# §11.5.3 error status register bits (Pentium 4 and later)
ESR_REDIRECTABLE_IPI: Final = 1 << 4
ESR_SEND_ILLEGAL_VECTOR: Final = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR: Final = 1 << 6
ESR_ILLEGAL_REGISTER: Final = 1 << 7

# §11.5.4 divide configuration register: bits 0, 1, 3 are the divider
DCR_WRITABLE: Final = 0b1011

# §11.6.2.2 destination format register models (bits 31:28)
DFR_FLAT: Final = 0xF
DFR_CLUSTER: Final = 0x0
DFR_RESERVED_ONES: Final = 0x0FFF_FFFF


def timer_divisor(dcr: int) -> int:
    """Divide value encoded by the divide configuration register (Figure 11-10): 2, 4, ... 128, or 1."""
    code = (dcr & 0b11) | ((dcr >> 1) & 0b100)
    return 1 if code == 0b111 else 2 << code


def x2apic_ldr(x2apic_id: int) -> int:
    """Logical x2APIC ID derived from the x2APIC ID (§11.12.10.2): cluster ID[19:4], bit ID[3:0]."""
    return (((x2apic_id >> 4) & 0xFFFF) << 16) | (1 << (x2apic_id & 0xF))


def priority_class(vector_or_priority: int) -> int:
    """Bits 7:4 of a vector or priority register (§11.8.3)."""
    return (vector_or_priority >> 4) & 0xF
