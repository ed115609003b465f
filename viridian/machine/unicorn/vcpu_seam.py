"""The fast engine's side of the seam: the :class:`~viridian.machine.backend.VcpuBackend` methods that are
thin over Unicorn (registers by name, snapshots, the clock counters, device MMIO, disassembly).

The run loop and the traps are vcpu.py and its vcpu_*.py helpers; the machine core reaches a vCPU only through
the protocol (viridian/machine/backend.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from viridian.machine.backend import CLOCK_FIELDS, MmioRead, MmioWrite
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn import snapshot_cpu
from viridian.machine.unicorn.lazy import defer, unbuilt

if TYPE_CHECKING:
    from viridian.devices.lapic import LocalApic
    from viridian.machine.machine import Machine
    from viridian.machine.unicorn.native import VnState

MASK64 = (1 << 64) - 1


@cache
def register_id(name: str) -> int:
    """Unicorn's register constant for an x86 register name (``"rip"``, ``"cr3"``...)."""
    rid = getattr(X, f"UC_X86_REG_{name.upper()}", None)
    if not isinstance(rid, int):
        raise KeyError(f"no register {name!r}")
    return rid


class SeamMethods:
    """Mixed into :class:`~viridian.machine.unicorn.vcpu.Vcpu` (which sets these attributes)."""

    m: Machine
    index: int
    uc: Any
    native: VnState
    apic: LocalApic
    efer: int

    def read_registers(self, names: Iterable[str]) -> tuple[int, ...]:
        ids = [register_id(n) for n in names]
        return tuple(int(x) for x in self.uc.reg_read_batch(ids))

    def read_msr(self, index: int) -> int:
        return int(self.uc.msr_read(index))

    def read_virtual(self, vaddr: int, length: int) -> bytes | None:
        cr0, cr3 = self.uc.reg_read_batch((X.UC_X86_REG_CR0, X.UC_X86_REG_CR3))
        return self.m.walker.read(int(cr3), int(cr0), vaddr, length)

    def describe_instruction(self, rip: int) -> str:
        data = self.read_virtual(rip, 16) or b""
        try:
            import capstone

            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            for insn in md.disasm(data, rip):
                return f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}".strip()
        except ImportError:  # pragma: no cover - capstone is a dependency
            pass
        return f"{rip:#x}: " + (data[:8].hex(" ") if data else "<not mapped>")

    # -- snapshots -------------------------------------------------------------------------------------------
    def save_cpu(self) -> dict[str, Any]:
        snapshot_cpu.check_code_segment(self)  # type: ignore[arg-type]
        return snapshot_cpu.save_cpu(self.uc)

    def load_cpu(self, saved: Any) -> None:
        snapshot_cpu.load_cpu(self, saved)  # type: ignore[arg-type]

    def clock_state(self) -> dict[str, int]:
        return {k: int(getattr(self.native, k)) for k in CLOCK_FIELDS}

    def set_clock_state(self, counters: Mapping[str, int]) -> None:
        for k in CLOCK_FIELDS:
            setattr(self.native, k, counters[k])

    def resync(self) -> None:
        self.native.tsc_offset = self.apic.tsc_offset & MASK64
        self.efer = int(self.uc.msr_read(E.EFER))

    # -- fast paths and devices ------------------------------------------------------------------------------
    def set_fast_spin(self, ok: bool) -> None:
        if unbuilt(self):
            return defer(self, "fast_spin", ok)  # applied when the engine is built (lazy.py)
        self.native.fast_spin_ok = int(ok)

    def recheck_at_next_block(self) -> None:
        n = self.native
        n.limit = min(int(n.limit), int(n.bytes))  # the engine leaves at the next block start

    def map_mmio(self, base: int, size: int, read: MmioRead, write: MmioWrite) -> None:
        def on_read(uc: Any, offset: int, sz: int, _ud: Any) -> int:
            return read(offset, sz)

        def on_write(uc: Any, offset: int, sz: int, value: int, _ud: Any) -> None:
            write(offset, sz, value)

        self.uc.mmio_map(base, size, self.guard(on_read, 0), None, self.guard(on_write), None)

    def guard(self, fn: Any, default: Any = None) -> Any:  # pragma: no cover - Vcpu.guard
        raise NotImplementedError

