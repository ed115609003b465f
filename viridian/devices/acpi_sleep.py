"""The HW-reduced ACPI sleep registers (engine-free): the Sleep Control and Sleep Status registers the FADT
points at (SLEEP_CONTROL_REG / SLEEP_STATUS_REG, viridian.machine.linux_acpi), one byte each in I/O space.

ACPI 6.5 §4.8.3.7 (Sleep Control and Status Registers): control bits 2-4 SLP_TYPx, bit 5 SLP_EN (write-only,
reads 0), bits 0-1 and 6-7 reserved; status bit 7 WAK_STS (set by hardware on wake, cleared by writing 1),
bits 0-6 reserved. §7.4.2 (\\_Sx): the DSDT's \\_S5_ package gives the SLP_TYP value of soft-off.

Only S5 is implemented (the DSDT declares no other \\_Sx, so OSPM never asks for another): writing SLP_EN
with SLP_TYP = S5_SLP_TYP calls ``power_off`` (the machine ends the run with status "exit", code 0, the
exit port's path). SLP_EN with any other type starts no transition (there is no such sleep state) and is
counted in ``ignored``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from viridian.state import Fields

CONTROL_PORT: Final = 0x600  # a byte in the PC's free I/O range (nothing else on this machine claims it)
STATUS_PORT: Final = 0x601
S5_SLP_TYP: Final = 5  # the value the DSDT's \_S5_ package declares for SLP_TYPa
SLP_TYP_SHIFT, SLP_TYP_MASK = 2, 0x1C
SLP_EN: Final = 1 << 5
WAK_STS: Final = 1 << 7


@dataclass
class AcpiSleep:
    """``power_off`` is called on an S5 request (it may raise to end the run)."""

    power_off: Callable[[], None]
    slp_typ: int = 0  # the SLP_TYP field last written
    wak_sts: bool = False  # never set: the machine has no sleeping state to wake from
    ignored: int = 0  # SLP_EN writes for a sleep type this platform does not have

    def save_state(self) -> dict[str, Any]:
        return {"slp_typ": self.slp_typ, "wak_sts": self.wak_sts, "ignored": self.ignored}

    def load_state(self, state: dict[str, Any]) -> None:
        """SLP_TYP is a 3-bit field (ACPI 6.5 §4.8.3.7)."""
        f = Fields(state, "acpi_sleep")
        self.slp_typ, self.wak_sts, self.ignored = (f.uint("slp_typ", 0, 7), f.flag("wak_sts"),
                                                    f.uint("ignored", 0, 1 << 63))

    @property
    def ports(self) -> tuple[int, int]:
        return (CONTROL_PORT, STATUS_PORT)

    def read(self, port: int, size: int) -> int:
        if port == CONTROL_PORT:
            return self.slp_typ << SLP_TYP_SHIFT  # SLP_EN reads 0, reserved bits 0
        return WAK_STS if self.wak_sts else 0

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == STATUS_PORT:
            if value & WAK_STS:  # write-1-to-clear
                self.wak_sts = False
            return
        self.slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT
        if not value & SLP_EN:
            return
        if self.slp_typ == S5_SLP_TYP:
            self.power_off()
        else:
            self.ignored += 1
