"""SynIC (TLFS §11 "Inter-partition communication"): per-VP message/event pages, SINTs, message
queues and the four synthetic timers (TLFS §12.x).

What the machine calls (engine-free contract):

- ``poll(now)`` (through ``Partition.poll``) before running the VP and whenever the previous deadline
  passed: fires due timers, retries pending messages, returns the next deadline (reference time) or
  None. Nothing armed and nothing queued costs two integer tests.
- ``on_eoi(vector)`` after the guest EOIs ``vector`` on this VP's local APIC (any EOI path: APIC
  register, x2APIC MSR, HV_X64_MSR_EOI, lazy APIC-assist EOI): SINTs using that vector rescan.
- Auto-EOI (SINTx bit 17): at interrupt *acknowledge* the machine/APIC must not leave the vector in
  ISR when ``is_auto_eoi(vector)`` holds (``auto_eoi_vectors`` lists them), and then call
  ``on_eoi(vector)`` itself (KVM kvm_get_apic_interrupt does the same).

The SIM/SIEF pages are ordinary guest RAM at the programmed GPA (no overlay): the model reads and
writes them through ``partition.memory``. The model runs while no vCPU executes guest code, so each
read-modify-write here is atomic from the guest's point of view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from viridian.abi.memory import GuestMemoryError
from viridian.partition.message_queue import FLAGS_OFFSET, TYPE_OFFSET, Delivery, MessageQueue, SynicMessage
from viridian.partition.stimer import SyntheticTimer
from viridian.state import Fields
from viridian.tlfs.hypercalls import (
    HV_EVENT_FLAGS_COUNT,
    HV_MESSAGE_FLAG_PENDING,
    HV_PAGE_SIZE,
    HV_SYNIC_SINT_COUNT,
    HV_SYNIC_STIMER_COUNT,
)
from viridian.tlfs.msrs import (
    PAGE_ENABLE,
    SCONTROL_ENABLE,
    SINT_AUTO_EOI,
    SINT_MASKED,
    SINT_MIN_VECTOR,
    SINT_POLLING,
    SINT_RESET_VALUE,
    SINT_VECTOR_MASK,
    SVERSION_VALUE,
)
from viridian.tlfs.pages import sief_flag_position, sim_slot_offset
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

PAGE_MASK: Final = ~(HV_PAGE_SIZE - 1) & ((1 << 64) - 1)
ALL_SINTS: Final = (1 << HV_SYNIC_SINT_COUNT) - 1


class SynIC:
    """The synthetic interrupt controller of one VP (and its synthetic timers)."""

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        self.queues = tuple(MessageQueue() for _ in range(HV_SYNIC_SINT_COUNT))
        self._live_timers = 0  # bit n: timer n armed or pending (kept by SyntheticTimer via timer_changed)
        self._queued = 0  # bit n: queue n non-empty
        self.timers = tuple(SyntheticTimer(self, i) for i in range(HV_SYNIC_STIMER_COUNT))
        self.control = 0
        self.version = SVERSION_VALUE
        self.siefp = 0
        self.simp = 0
        self.sints = [SINT_RESET_VALUE] * HV_SYNIC_SINT_COUNT
        self.reset()

    def reset(self) -> None:
        """VP reset (TLFS §11.x): SCONTROL/SIEFP/SIMP 0, every SINT 0x10000, queues and timers cleared.
        SCONTROL starts at 0 (TLFS App. C; KVM synic_init memsets it to 0 as well)."""
        self.control = 0
        self.siefp = 0
        self.simp = 0
        self.sints = [SINT_RESET_VALUE] * HV_SYNIC_SINT_COUNT
        for queue in self.queues:
            queue.clear()
        self._queued = 0
        for timer in self.timers:
            timer.reset()

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"control": self.control, "simp": self.simp, "siefp": self.siefp, "sints": list(self.sints),
                "queues": [q.save_state() for q in self.queues], "timers": [t.save_state() for t in self.timers]}

    def load_state(self, f: Fields) -> None:
        """TLFS §11.x: SCONTROL/SIMP/SIEFP/SINTx are u64 MSR values (a SINT's vector is its low byte),
        16 queues and 4 timers; the live-timer and queued masks are recomputed."""
        values = (f.uint("control"), f.uint("simp"), f.uint("siefp"), f.uints("sints", HV_SYNIC_SINT_COUNT))
        queues, timers = f.seq("queues", HV_SYNIC_SINT_COUNT), f.seq("timers", HV_SYNIC_STIMER_COUNT)
        for i, (queue, saved) in enumerate(zip(self.queues, queues, strict=True)):
            queue.load_state(Fields(saved, f"{f.where}.queues[{i}]"))
        for i, (timer, saved) in enumerate(zip(self.timers, timers, strict=True)):
            timer.load_state(Fields(saved, f"{f.where}.timers[{i}]"))
        self.control, self.simp, self.siefp, self.sints = values
        self._queued = sum(1 << i for i, q in enumerate(self.queues) if q)
        self.timer_changed()

    # -- state --------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.control & SCONTROL_ENABLE)

    def _page(self, msr_value: int) -> int | None:
        """GPA of an enabled SIMP/SIEFP page, None when disabled or not inside RAM (TLFS: beyond the
        GPA space the page is simply inaccessible, no #GP)."""
        if not msr_value & PAGE_ENABLE:
            return None
        gpa = msr_value & PAGE_MASK
        return gpa if gpa + HV_PAGE_SIZE <= self.vp.partition.memory.size else None

    @property
    def sim_gpa(self) -> int | None:
        return self._page(self.simp)

    @property
    def sief_gpa(self) -> int | None:
        return self._page(self.siefp)

    @property
    def accepts_messages(self) -> bool:
        """SynIC enabled and SIM usable: a valid message target (TLFS HvPostMessage)."""
        return self.enabled and self.sim_gpa is not None

    def sint_vector(self, sint: int) -> int:
        return self.sints[sint] & SINT_VECTOR_MASK

    def sint_masked(self, sint: int) -> bool:
        return bool(self.sints[sint] & SINT_MASKED)

    @property
    def auto_eoi_vectors(self) -> frozenset[int]:
        """Vectors of unmasked auto-EOI SINTs (KVM synic_has_vector_auto_eoi)."""
        return frozenset(
            v & SINT_VECTOR_MASK for v in self.sints if v & SINT_AUTO_EOI and not v & SINT_MASKED
        )

    def is_auto_eoi(self, vector: int) -> bool:
        return vector in self.auto_eoi_vectors

    # -- MSR-level mutators (msrs/synic.py validates, then calls these) ----------------------------------
    def write_scontrol(self, value: int) -> None:
        was = self.enabled
        self.control = value
        if self.enabled and not was:
            self.rescan()

    def write_simp(self, value: int) -> None:
        self.simp = self._program_page(self.simp, value)
        self.rescan()

    def write_siefp(self, value: int) -> None:
        self.siefp = self._program_page(self.siefp, value)

    def _program_page(self, old: int, new: int) -> int:
        # KVM (synic v1) zeroes the page whenever the enable bit is written; we zero only when a page
        # newly appears (enable 0->1 or GPA change) so rewriting the same value keeps pending messages.
        gpa = self._page(new)
        if gpa is not None and (not old & PAGE_ENABLE or (old & PAGE_MASK) != gpa):
            self.vp.partition.memory.write(gpa, bytes(HV_PAGE_SIZE))
        return new

    def write_sint(self, sint: int, value: int) -> None:
        self.sints[sint] = value

    def eom(self) -> None:
        """TLFS §11.x: EOM write = rescan every SINT (empty queues: no-op)."""
        self.rescan()

    def on_eoi(self, vector: int) -> None:
        """The guest EOI'd ``vector`` (or it was auto-EOI'd): rescan SINTs using it (KVM
        kvm_hv_synic_send_eoi: unmasked SINTs only)."""
        mask = 0
        for sint, value in enumerate(self.sints):
            if value & SINT_VECTOR_MASK == vector and not value & SINT_MASKED:
                mask |= 1 << sint
        if mask:
            self.rescan(mask)

    # -- interrupts ----------------------------------------------------------------------------------------
    def assert_vector(self, vector: int) -> bool:
        """Edge interrupt ``vector`` on this VP's local APIC; False when lost (no APIC / refused)."""
        apic = self.vp.apic
        delivered = apic.assert_interrupt(vector, False) if apic is not None else False
        self.vp.partition.services.kick(self.vp.index)
        return delivered

    def _signal_sint(self, sint: int) -> bool:
        """TLFS §11.x: raise SINTx.Vector unless the SINT is masked or in polling mode."""
        value = self.sints[sint]
        if value & (SINT_MASKED | SINT_POLLING) or value & SINT_VECTOR_MASK < SINT_MIN_VECTOR:
            return False
        return self.assert_vector(value & SINT_VECTOR_MASK)

    def assert_sint(self, sint: int) -> bool:
        """A host device raises SINTx (QEMU hyperv-testdev's SINT route): delivered only while the SynIC is
        enabled (SCONTROL) and SINTx is unmasked, not polling, with a valid vector. False when nothing went."""
        if not 0 <= sint < HV_SYNIC_SINT_COUNT or not self.enabled:
            return False
        return self._signal_sint(sint)

    # -- messages -------------------------------------------------------------------------------------------
    def post_message(self, sint: int, msg: SynicMessage) -> HvStatus:
        """Queue ``msg`` for SIM slot ``sint`` and try to deliver it now (host devices and ports)."""
        if not self.accepts_messages:
            return HvStatus.INVALID_SYNIC_STATE  # TLFS HvPostMessage: SynIC or SIM disabled
        if not self.queues[sint].push(msg):
            return HvStatus.INSUFFICIENT_BUFFERS  # bounded queue (TLFS: 16 buffers per port)
        self._queued |= 1 << sint
        self.rescan(1 << sint)
        return HvStatus.SUCCESS

    def deliver_message(self, sint: int, msg: SynicMessage, *, no_retry: bool = False) -> Delivery:
        """Copy ``msg`` into slot ``sint`` if it is free (TLFS §11.x message delivery)."""
        gpa = self.sim_gpa
        if not self.enabled or gpa is None:
            return Delivery.UNAVAILABLE
        slot = gpa + sim_slot_offset(sint)
        memory = self.vp.partition.memory
        try:
            busy = memory.read(slot + TYPE_OFFSET, 4) != b"\0\0\0\0"
            if busy:
                if no_retry:
                    return Delivery.DROPPED
                flags = memory.read(slot + FLAGS_OFFSET, 1)[0]
                if not flags & HV_MESSAGE_FLAG_PENDING:
                    memory.write(slot + FLAGS_OFFSET, bytes([flags | HV_MESSAGE_FLAG_PENDING]))
                return Delivery.BUSY
            memory.write(slot, msg.encode())
        except GuestMemoryError:  # RAM shrank under us: treat like an inaccessible page
            return Delivery.UNAVAILABLE
        self._signal_sint(sint)
        return Delivery.DELIVERED

    def rescan(self, sints: int = ALL_SINTS) -> None:
        """Retry pending timer messages, then queue heads, for the SINTs in bitmask ``sints``."""
        now: int | None = None
        if self._live_timers:
            for timer in self.timers:
                if timer.pending and not timer.direct and sints >> timer.sintx & 1:
                    now = self.vp.partition.reference_time() if now is None else now
                    timer.retry(now)
        todo = self._queued & sints
        while todo:
            sint = (todo & -todo).bit_length() - 1
            todo &= todo - 1
            queue = self.queues[sint]
            # Loop: after a delivery the next attempt finds the slot busy and sets MessagePending,
            # telling the guest more messages wait (it then writes EOM).
            while queue and self.deliver_message(sint, queue[0]) is Delivery.DELIVERED:
                queue.pop()
            if not queue:
                self._queued &= ~(1 << sint)

    @property
    def queued(self) -> int:
        """Messages waiting in the queues (not counting timer buffers)."""
        return sum(len(q) for q in self.queues)

    # -- event flags ---------------------------------------------------------------------------------------
    def event_state(self, sint: int) -> HvStatus:
        """Whether flags of ``sint`` can be signalled (TLFS HvSignalEvent: disabled SIEF or masked
        SINT -> INVALID_SYNIC_STATE)."""
        if not self.enabled or self.sief_gpa is None or self.sint_masked(sint):
            return HvStatus.INVALID_SYNIC_STATE
        return HvStatus.SUCCESS

    def signal_event(self, sint: int, flag: int) -> bool:
        """Set flag ``flag`` of ``sint`` in the SIEF page (byte sint*256 + flag//8, bit flag%8);
        interrupt only when the flag was clear. True if it was newly set (TLFS §11.x)."""
        gpa = self.sief_gpa
        if not self.enabled or gpa is None or not 0 <= flag < HV_EVENT_FLAGS_COUNT:
            return False
        offset, bit_index = sief_flag_position(sint, flag)
        addr, bit = gpa + offset, 1 << bit_index
        memory = self.vp.partition.memory
        try:
            old = memory.read(addr, 1)[0]
            if old & bit:
                return False
            memory.write(addr, bytes([old | bit]))
        except GuestMemoryError:
            return False
        self._signal_sint(sint)
        return True

    # -- timers -------------------------------------------------------------------------------------------
    def timer_changed(self) -> None:
        """Called by a timer whenever it is armed, stopped, expires or delivers."""
        self._live_timers = sum(1 << t.index for t in self.timers if t.live)

    def now(self) -> int:
        return self.vp.partition.reference_time()

    def quiet(self) -> bool:
        """No timer armed or pending and nothing queued: :meth:`poll` would do nothing (issue 19: O(1) polls)."""
        return not self._live_timers and not self._queued

    def busy(self) -> bool:
        """A timer message waits for a free slot, or messages are queued: every poll retries them."""
        return bool(self._queued) or (bool(self._live_timers) and any(t.pending for t in self.timers))

    def poll(self, now: int) -> int | None:
        """Deliver what is due at reference time ``now``; return the next deadline (or None)."""
        if not self._live_timers and not self._queued:
            return None
        if self._live_timers:
            for timer in self.timers:
                if timer.deadline is not None and now >= timer.deadline:
                    timer.expire(now)  # never early: only once reference time reached the deadline
                elif timer.pending:
                    timer.retry(now)
        if self._queued:
            self.rescan(self._queued)
        deadlines = [t.deadline for t in self.timers if t.deadline is not None]
        return min(deadlines) if deadlines else None
