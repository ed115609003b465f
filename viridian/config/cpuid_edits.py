"""CPUID edits: change single bits of the synthesized hypervisor leaves, to build offers no hypervisor makes
(a recommendation without its privilege, a privilege without its feature bit, an odd spin retry count).

Spelling: ``LEAF.REG+VALUE`` sets the bits of VALUE, ``LEAF.REG-VALUE`` clears them, ``LEAF.REG=VALUE``
replaces the register; LEAF in 0x40000000-0x4000000A, REG one of eax/ebx/ecx/edx. Applied after the
leaves are synthesized, so the partition's gating (MSR #GP, hypercall ACCESS_DENIED) follows the edited
bits (KVM enforce_cpuid semantics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from viridian.errors import ConfigError

FIRST, LAST = 0x40000000, 0x4000000A
_SYNTAX = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\.(eax|ebx|ecx|edx)\s*([+=-])\s*(0x[0-9a-fA-F]+|\d+)\s*$")


@dataclass(frozen=True)
class CpuidEdit:
    leaf: int
    reg: str
    op: str  # "+" set bits, "-" clear bits, "=" replace
    value: int

    def apply(self, current: int) -> int:
        if self.op == "+":
            return current | self.value
        if self.op == "-":
            return current & ~self.value & 0xFFFF_FFFF
        return self.value

    def __str__(self) -> str:
        return f"{self.leaf:#x}.{self.reg}{self.op}{self.value:#x}"


def parse_edit(text: str) -> CpuidEdit:
    m = _SYNTAX.match(text)
    if not m:
        raise ConfigError(f"CPUID edit {text!r}: write LEAF.REG+BITS, LEAF.REG-BITS or LEAF.REG=VALUE, "
                          "e.g. 0x40000003.eax-0x10")
    leaf, value = int(m.group(1), 0), int(m.group(4), 0)
    if not FIRST <= leaf <= LAST:
        raise ConfigError(f"CPUID edit {text!r}: leaf must be 0x40000000-0x4000000A")
    if value >= 1 << 32:
        raise ConfigError(f"CPUID edit {text!r}: value must fit 32 bits")
    return CpuidEdit(leaf, m.group(2), m.group(3), value)
