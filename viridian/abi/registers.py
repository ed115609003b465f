"""Register conventions of the hypercall ABI, x64 and x86 (TLFS §3.7 "Hypercall calling conventions").

The machine hands over a :class:`HypercallRegisters` snapshot; the ABI answers with the registers to
write back. Only ABI registers ever change: RAX (EDX:EAX), RCX/EDX:EAX on continuation, and for fast
output RDX, R8, XMM0-5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
M128 = (1 << 128) - 1
XMM_COUNT = 6  # XMM0..XMM5 carry fast input/output


@dataclass
class HypercallRegisters:
    """What the ABI reads. ``long_mode`` = EFER.LMA && CS.L (x64 convention); else x86."""

    long_mode: bool = True
    cpl: int = 0
    protected: bool = True  # CR0.PE
    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    r8: int = 0
    xmm: list[int] = field(default_factory=lambda: [0] * XMM_COUNT)

    @property
    def control(self) -> int:
        """Input value: RCX (x64) or EDX:EAX (x86)."""
        return self.rcx & M64 if self.long_mode else ((self.rdx & M32) << 32) | (self.rax & M32)

    @property
    def param1(self) -> int:
        """Input GPA / first fast parameter: RDX (x64) or EBX:ECX (x86)."""
        return self.rdx & M64 if self.long_mode else ((self.rbx & M32) << 32) | (self.rcx & M32)

    @property
    def param2(self) -> int:
        """Output GPA / second fast parameter: R8 (x64) or EDI:ESI (x86)."""
        return self.r8 & M64 if self.long_mode else ((self.rdi & M32) << 32) | (self.rsi & M32)

    def result_writes(self, value: int) -> dict[str, int]:
        """Registers receiving the 64-bit result value."""
        if self.long_mode:
            return {"rax": value & M64}
        return {"rax": value & M32, "rdx": (value >> 32) & M32}

    def control_writes(self, value: int) -> dict[str, int]:
        """Registers receiving an updated input value (rep continuation)."""
        if self.long_mode:
            return {"rcx": value & M64}
        return {"rax": value & M32, "rdx": (value >> 32) & M32}

    def fast_input_block(self, length: int, xmm: bool) -> bytes:
        """Input bytes of a fast call: RDX, R8 then (XMM fast) XMM0..XMM5 (x64 only)."""
        raw = self.param1.to_bytes(8, "little") + self.param2.to_bytes(8, "little")
        if xmm:
            raw += b"".join((x & M128).to_bytes(16, "little") for x in self.xmm[:XMM_COUNT])
        return raw[:length]

    def fast_output_writes(self, input_length: int, output: bytes, offset: int = 0) -> dict[str, int]:
        """XMM fast output: the 16-byte register units after the input (rounded up to 16 bytes) —
        unit 0 is RDX:R8, units 1..6 are XMM0..XMM5 (TLFS §3.7 "XMM fast output").

        ``output`` lands at byte ``offset`` of the output area (a rep call's RepStartIndex * element size).
        Units wholly before ``offset`` are not written, and bytes before it in a shared unit keep their
        value: they hold the output of reps already completed (TLFS §3.7 "rep start index ... how many
        elements have been completed"). The rest of the last unit is zeroed (TLFS: padding may be
        overwritten, with zeros)."""
        writes: dict[str, int] = {}
        if not output:
            return writes
        unit = (input_length + 15) // 16 + offset // 16
        if offset % 16:
            output = self._unit_bytes(unit)[: offset % 16] + output
        for off in range(0, len(output), 16):
            chunk = output[off : off + 16].ljust(16, b"\0")
            if unit == 0:
                writes["rdx"] = int.from_bytes(chunk[:8], "little")
                writes["r8"] = int.from_bytes(chunk[8:], "little")
            else:
                writes[f"xmm{unit - 1}"] = int.from_bytes(chunk, "little")
            unit += 1
        return writes

    def _unit_bytes(self, unit: int) -> bytes:
        """Current contents of fast register unit ``unit`` (0 = RDX:R8, n = XMM(n-1))."""
        if unit == 0:
            return (self.rdx & M64).to_bytes(8, "little") + (self.r8 & M64).to_bytes(8, "little")
        return (self.xmm[unit - 1] & M128).to_bytes(16, "little")


def fast_output_capacity(input_length: int) -> int:
    """Bytes of XMM fast output available after ``input_length`` bytes of input."""
    return max(0, (1 + XMM_COUNT) * 16 - (input_length + 15) // 16 * 16)
