"""Guest-visible faults an emulated instruction can raise (Intel SDM vol. 3 §6.15)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fault:
    """An exception to inject into the guest instead of completing the instruction."""

    vector: int
    error_code: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        name = {6: "#UD", 13: "#GP", 14: "#PF"}.get(self.vector, f"vector {self.vector}")
        code = "" if self.error_code is None else f"({self.error_code})"
        return f"{name}{code}" + (f": {self.reason}" if self.reason else "")


def gp(reason: str = "") -> Fault:
    """#GP(0)."""
    return Fault(13, 0, reason)


def ud(reason: str = "") -> Fault:
    """#UD."""
    return Fault(6, None, reason)


class GuestFault(Exception):
    """Raised inside handlers to abort with a guest-visible fault; registries turn it into a Fault value."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(str(fault))
        self.fault = fault
