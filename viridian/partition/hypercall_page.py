"""The hypercall page (TLFS §3.13 "Establishing the hypercall interface").

Enabling HV_X64_MSR_HYPERCALL overlays a read+execute page at the chosen GPFN whose contents are
implementation-defined; the guest CALLs its first byte and the code must end in a near RET. Ours is
``vmcall; ret`` (``0F 01 C1 C3``, Intel) or ``vmmcall; ret`` (``0F 01 D9 C3``, AMD) like KVM, with the rest of
the page filled with ``int3`` (0xCC) like Xen and OpenVMM, so a stray jump into the page traps.

Like KVM (kvm_hv_set_msr_pw writes the stub with kvm_vcpu_write_guest) the model writes these bytes into
guest RAM. On Hyper-V the page is a read-only overlay (TLFS §3.13: guest writes #GP): the machine learns
where it is from :meth:`viridian.partition.partition.Partition.overlays` and write-protects it.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from viridian.abi.memory import GuestMemory, GuestMemoryError
from viridian.tlfs.hypercalls import HV_PAGE_SIZE

INT3: Final = 0xCC
RET: Final = 0xC3


class HypercallInsn(Enum):
    """The instruction the stub uses to leave the guest (the CPU vendor decides; KVM patches the same)."""

    VMCALL = bytes((0x0F, 0x01, 0xC1))  # Intel VMX
    VMMCALL = bytes((0x0F, 0x01, 0xD9))  # AMD SVM


def stub(insn: HypercallInsn = HypercallInsn.VMCALL) -> bytes:
    """The code at offset 0 of the page: ``<insn>; ret``."""
    return insn.value + bytes((RET,))


def page_contents(insn: HypercallInsn = HypercallInsn.VMCALL) -> bytes:
    """The full 4 KiB page: the stub, then int3 padding."""
    code = stub(insn)
    return code + bytes((INT3,)) * (HV_PAGE_SIZE - len(code))


class HypercallPage:
    """Where the hypercall page currently lives, and writing it into guest RAM."""

    def __init__(self, memory: GuestMemory, insn: HypercallInsn = HypercallInsn.VMCALL,
                 contents: bytes | None = None) -> None:
        self.memory = memory
        self.insn = insn
        # the page's code: KVM's stub by default, or what the machine gives (its hypercall page, stubs.py)
        self.contents = page_contents(insn) if contents is None else bytes(contents)
        if len(self.contents) != HV_PAGE_SIZE:
            raise ValueError(f"a hypercall page is {HV_PAGE_SIZE} bytes, not {len(self.contents)}")
        self.gpa: int | None = None  # None while disabled

    def fits(self, gpfn: int) -> bool:
        """The page at ``gpfn`` lies entirely inside guest RAM."""
        gpa = gpfn * HV_PAGE_SIZE
        return gpa >= 0 and gpa + HV_PAGE_SIZE <= self.memory.size

    def enable(self, gpfn: int) -> bool:
        """Write the page at ``gpfn``; False (nothing changed) if it is not in RAM."""
        if not self.fits(gpfn):
            return False
        gpa = gpfn * HV_PAGE_SIZE
        try:
            self.memory.write(gpa, self.contents)
        except GuestMemoryError:
            return False
        self.gpa = gpa
        return True

    def disable(self) -> None:
        """Unmap the overlay; RAM keeps the stub (KVM never erases it either)."""
        self.gpa = None
