"""The ACPI fixed-hardware block of the PC (PIIX4 PM I/O block at 0xB000, engine-free): PM1a event block
(PM1_STS, PM1_EN), PM1a control block (PM1_CNT) and the power-management timer (PM_TMR), with the SCI on IRQ 9.

ACPI 6.5 §4.8.3.1 (PM1 event grouping: status bits are write-1-to-clear, an enabled status raises the SCI),
§4.8.3.2 (PM1 control: SCI_EN, SLP_TYP, SLP_EN), §4.8.3.3 (PM timer: 3.579545 MHz, 24 bits or 32 bits with the
FADT's TMR_VAL_EXT; TMR_STS is set each time the counter's top bit changes), §5.2.9 (FADT blocks). Layout as
QEMU's PIIX4 (hw/acpi/core.c, hw/acpi/piix4.c with SeaBIOS's base 0xB000): PM1_STS +0, PM1_EN +2, PM1_CNT +4,
PM_TMR +8; the rest of the 64-byte block is unclaimed (reads all-ones). The counter is computed from virtual
time with exact integer arithmetic: ``count = now * 3579545 // tsc_hz`` (so it is monotonic and never drifts from
the TSC). Hand-off state (no SMI_CMD: the platform is always in ACPI mode, QEMU's ``acpi_only``): SCI_EN = 1,
every enable 0, every status 0. SCI_EN is hardware-owned (§4.8.3.2.1: OSPM preserves it): writes leave it set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from viridian.devices.pc_api import IrqSink, Now, NullIrq

PM_BASE: Final = 0xB000  # SeaBIOS's PORT_ACPI_PM_BASE for the PIIX4 PM function
PM_TIMER_HZ: Final = 3_579_545
SCI_IRQ: Final = 9
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0, 2, 4, 8  # offsets in the block
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN = 4, 2, 4

# §4.8.3.1.1 Table 4.11 (PM1 Status) / Table 4.12 (PM1 Enable)
TMR_STS, BM_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS, WAK_STS = 1, 1 << 4, 1 << 5, 1 << 8, 1 << 9, 1 << 10, 1 << 15
STS_BITS: Final = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS
TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN = 1, 1 << 5, 1 << 8, 1 << 9, 1 << 10
EN_BITS: Final = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN
# §4.8.3.2.1 Table 4.13 (PM1 Control)
SCI_EN, BM_RLD, GBL_RLS = 1, 1 << 1, 1 << 2
SLP_TYP_SHIFT, SLP_TYP_MASK, SLP_EN = 10, 7 << 10, 1 << 13
CNT_KEEP: Final = BM_RLD | SLP_TYP_MASK  # bits that read back (GBL_RLS and SLP_EN are write-only)

_REGS: Final = ((PM1_STS, 2), (PM1_EN, 2), (PM1_CNT, 2), (PM_TMR, 4))


@dataclass
class AcpiPm:
    """``now``: virtual time in TSC ticks; ``ext``: a 32-bit counter (FADT TMR_VAL_EXT) instead of 24 bits;
    ``sleep``: called with SLP_TYP when OSPM writes SLP_EN (the platform powers off for the DSDT's \\_S5_ value)."""

    now: Now
    tsc_hz: int
    irq: IrqSink = field(default_factory=NullIrq)
    base: int = PM_BASE
    ext: bool = False
    sleep: Callable[[int], None] | None = None
    sts: int = 0
    en: int = 0
    cnt: int = SCI_EN
    sci: bool = False  # the SCI line as last driven
    _seen: int = 0  # counter value (unwrapped) status was last brought up to

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self.base + off + i for off, size in _REGS for i in range(size))

    @property
    def bits(self) -> int:
        return 32 if self.ext else 24

    def count(self, now: int | None = None) -> int:
        """The unwrapped counter at ``now`` (TSC ticks): floor(now * 3.579545 MHz / tsc_hz)."""
        return (self.now() if now is None else now) * PM_TIMER_HZ // self.tsc_hz

    # -- time ------------------------------------------------------------------------------------------
    def advance(self, now: int) -> None:
        """§4.8.3.3: TMR_STS is set whenever the counter's top bit changed since status was last updated."""
        c = self.count(now)
        top = self.bits - 1
        if c >> top != self._seen >> top:
            self.sts |= TMR_STS
        self._seen = max(self._seen, c)
        self._update()

    def next_deadline(self) -> int | None:
        """The TSC tick of the next top-bit change, when that would raise the SCI (TMR_EN set, TMR_STS clear)."""
        if not (self.en & TMR_EN and self.cnt & SCI_EN) or self.sts & TMR_STS:
            return None
        half = 1 << (self.bits - 1)
        target = (self._seen // half + 1) * half  # first count value with the top bit flipped
        return -(-target * self.tsc_hz // PM_TIMER_HZ)  # smallest tick whose count reaches it

    def _update(self) -> None:
        level = bool(self.sts & self.en & STS_BITS) and bool(self.cnt & SCI_EN)
        if level != self.sci:
            self.sci = level
            self.irq.set_irq(SCI_IRQ, level)  # ACPI §5.2.9 SCI_INT: shareable, level, active high (QEMU ISO)

    # -- port I/O (bytes of the 16/32-bit registers compose any access size) ----------------------------
    def _value(self, off: int) -> int:
        if off == PM1_STS:
            return self.sts
        if off == PM1_EN:
            return self.en
        if off == PM1_CNT:
            return self.cnt & (CNT_KEEP | SCI_EN)
        return self.count() & ((1 << self.bits) - 1)  # §4.8.3.3: the upper 8 bits read 0 in 24-bit mode

    def read(self, port: int, size: int) -> int:
        self.advance(self.now())
        out = 0
        for i in range(size):
            at = port - self.base + i
            for off, width in _REGS:
                if off <= at < off + width:
                    out |= ((self._value(off) >> (8 * (at - off))) & 0xFF) << (8 * i)
                    break
            else:
                out |= 0xFF << (8 * i)
        return out

    def write(self, port: int, size: int, value: int) -> None:
        self.advance(self.now())
        for off, width in _REGS:
            mask = val = 0
            for i in range(size):
                at = port - self.base + i
                if off <= at < off + width:
                    mask |= 0xFF << (8 * (at - off))
                    val |= ((value >> (8 * i)) & 0xFF) << (8 * (at - off))
            if mask:
                self._write_reg(off, mask, val)
        self._update()

    def _write_reg(self, off: int, mask: int, val: int) -> None:
        if off == PM1_STS:
            self.sts &= ~(val & mask)  # §4.8.3.1: write 1 to clear, 0 has no effect
        elif off == PM1_EN:
            self.en = (self.en & ~mask | val & mask) & EN_BITS
        elif off == PM1_CNT:
            self.cnt = (self.cnt & ~mask | val & mask) & CNT_KEEP | SCI_EN
            if val & mask & SLP_EN and self.sleep is not None:  # §4.8.3.2.1 / §7.4.2: enter \_Sx
                self.sleep((val & SLP_TYP_MASK) >> SLP_TYP_SHIFT)
        # PM_TMR is read-only (§4.8.3.3): writes are ignored

    # -- snapshots ---------------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"sts": self.sts, "en": self.en, "cnt": self.cnt, "sci": self.sci, "seen": self._seen,
                "ext": self.ext}

    def load_state(self, state: dict[str, Any]) -> None:
        def field_(name: str, limit: int) -> int:
            v = state.get(name)
            if type(v) is not int or not 0 <= v < limit:
                raise ValueError(f"pm timer state: bad {name!r}: {v!r}")
            return v

        sts, en, cnt, seen = (field_("sts", 1 << 16), field_("en", 1 << 16), field_("cnt", 1 << 16),
                              field_("seen", 1 << 64))
        if type(state.get("sci")) is not bool or type(state.get("ext")) is not bool:
            raise ValueError("pm timer state: 'sci' and 'ext' must be booleans")
        if sts & ~STS_BITS or en & ~EN_BITS or cnt & ~(CNT_KEEP | SCI_EN):
            raise ValueError("pm timer state: reserved bits set")
        self.sts, self.en, self.cnt, self._seen = sts, en, cnt | SCI_EN, seen
        self.sci, self.ext = state["sci"], state["ext"]
