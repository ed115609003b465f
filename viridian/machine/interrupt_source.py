"""Which interrupt a vCPU takes next, and the model's side of taking it: engine-neutral, used by both engines'
delivery (unicorn/vcpu_delivery.py, reference/events.py). The engines keep what is theirs: NMI blocking, the
interrupt window (RFLAGS.IF, the STI/MOV SS shadow) and entering the handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend


def prepare(v: VcpuBackend) -> None:
    """Before looking for an interrupt: settle a skipped APIC-assist EOI, poll the timers, wake GUEST_IDLE."""
    v.vp.assist.retire_lazy_eoi()
    v.m.poll_vcpu(v)
    if v.idle and (v.apic.irr_vectors() or v.nmi_pending):
        v.idle = False  # GUEST_IDLE wakes on any pending interrupt, even with IF = 0


def pending(v: VcpuBackend) -> tuple[bool, int | None] | None:
    """(ExtINT, APIC vector) of the maskable interrupt to take, or None. The 8259A first on the BSP, as KVM does."""
    platform = v.m.platform if v.index == 0 else None
    extint = platform is not None and platform.extint_pending()
    vector = None if extint else v.apic.pending_vector()
    if vector is None and not extint:
        return None
    return extint, vector


def acknowledge(v: VcpuBackend, extint: bool, vector: int | None) -> int:
    """Take the interrupt out of its source; the vector to deliver."""
    if extint:  # ExtINT via LINT0 (SDM §10.5.1): the vector is the 8259A's INTA answer
        assert v.m.platform is not None
        return v.m.platform.extint_ack()
    assert vector is not None
    v.apic.acknowledge()
    if v.vp.synic.is_auto_eoi(vector):  # SINTx AutoEOI: out of service at delivery (TLFS; KVM)
        v.apic.auto_eoi(vector)
    else:
        v.vp.assist.on_inject(vector)
    return vector


def delivered(v: VcpuBackend, vector: int, source: str) -> None:
    """Count a delivered interrupt (source "nmi", "extint" or "apic") and trace it."""
    v.stats.interrupts_delivered += 1
    if source == "nmi":
        v.stats.events["nmi"] += 1
        if v.m.tracer is not None:
            v.m.tracer.interrupt(v, 2, "nmi")
    elif v.m.tracer is not None:
        v.m.tracer.interrupt(v, vector, source, auto_eoi=source == "apic" and v.vp.synic.is_auto_eoi(vector))
