"""Synthetic timers: one-shot/periodic/auto-enable/direct, busy slots, catch-up, never early, fuzzing."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from synic_harness import GP, SIM_GPA, VEC, Rig, make

from viridian.partition.message_queue import SynicMessage
from viridian.tlfs.hypercalls import HvMessageType
from viridian.tlfs.msrs import HvMsr, stimer_config_msr, stimer_count_msr

ENABLE, PERIODIC, LAZY, AUTO, DIRECT = 1, 2, 4, 8, 1 << 12
TIMER_SINT = 2
MS = 10_000  # 1 ms in 100 ns units


def sintx(n: int) -> int:
    return n << 16


def timer_msg(rig: Rig, sint: int = TIMER_SINT) -> tuple[int, int, int, int, int, int] | None:
    """(type, size, flags, timer index, expiration, delivery) of the slot, None when empty."""
    raw = rig.slot(sint)
    mtype, size, flags = struct.unpack_from("<IBB", raw)
    if mtype == 0:
        return None
    index, reserved, exp, dlv = struct.unpack_from("<IIQQ", raw, 16)
    assert reserved == 0
    return mtype, size, flags, index, exp, dlv


def ready(vp_count: int = 2) -> Rig:
    rig = make(vp_count=vp_count)
    rig.enable()
    rig.sint(TIMER_SINT)
    rig.advance_to(1_000_000)
    return rig


def test_one_shot_absolute_deadline_never_early() -> None:
    rig = ready()
    deadline = rig.now() + 5 * MS
    rig.stimer(1, AUTO | sintx(TIMER_SINT), deadline)
    assert rig.rd(stimer_config_msr(1)) == AUTO | ENABLE | sintx(TIMER_SINT)
    assert rig.poll() == deadline
    rig.advance_to(deadline - 1)
    assert rig.poll() == deadline
    assert timer_msg(rig) is None
    rig.advance_to(deadline)
    assert rig.poll() is None
    assert timer_msg(rig) == (HvMessageType.TIMER_EXPIRED, 24, 0, 1, deadline, deadline)
    assert rig.apics[0].vectors == [VEC]
    assert rig.rd(stimer_config_msr(1)) == AUTO | sintx(TIMER_SINT)  # one-shot cleared Enable
    assert rig.rd(stimer_count_msr(1)) == deadline


def test_one_shot_late_poll_reports_both_times() -> None:
    rig = ready()
    deadline = rig.now() + MS
    rig.stimer(0, AUTO | sintx(TIMER_SINT), deadline)
    rig.advance_to(deadline + 777)
    rig.poll()
    assert timer_msg(rig) == (HvMessageType.TIMER_EXPIRED, 24, 0, 0, deadline, deadline + 777)


def test_one_shot_in_the_past_fires_at_once() -> None:
    rig = ready()
    now = rig.now()
    rig.stimer(3, sintx(TIMER_SINT), 100)  # COUNT first, no auto-enable: nothing yet
    assert timer_msg(rig) is None
    rig.ok(stimer_config_msr(3), ENABLE | sintx(TIMER_SINT))  # enabling a past deadline: fires within WRMSR
    assert timer_msg(rig) == (HvMessageType.TIMER_EXPIRED, 24, 0, 3, 100, now)
    assert rig.poll() is None


def test_auto_enable_and_count_zero_disables() -> None:
    rig = ready()
    rig.stimer(2, AUTO | PERIODIC | sintx(TIMER_SINT))
    assert rig.rd(stimer_config_msr(2)) & ENABLE == 0
    rig.ok(stimer_count_msr(2), MS)
    assert rig.rd(stimer_config_msr(2)) & ENABLE
    assert rig.poll() == rig.now() + MS
    rig.ok(stimer_count_msr(2), 0)
    assert rig.rd(stimer_config_msr(2)) & ENABLE == 0
    assert rig.poll() is None


def test_enable_without_auto_enable_needs_config_write() -> None:
    rig = ready()
    rig.stimer(0, PERIODIC | sintx(TIMER_SINT), MS)
    assert rig.poll() is None
    rig.ok(stimer_config_msr(0), ENABLE | PERIODIC | sintx(TIMER_SINT))
    assert rig.poll() == rig.now() + MS


def test_periodic_tick_count_over_an_interval() -> None:
    rig = ready()
    start = rig.now()
    rig.stimer(0, ENABLE | PERIODIC | sintx(TIMER_SINT), MS)
    expirations = []
    for step in range(1, 101):
        rig.advance_to(start + step * MS)
        assert rig.poll() == start + (step + 1) * MS
        got = timer_msg(rig)
        assert got is not None
        expirations.append(got[4])
        rig.consume(TIMER_SINT)
    assert expirations == [start + k * MS for k in range(1, 101)]
    assert rig.apics[0].vectors == [VEC] * 100


def test_periodic_fine_grained_polling_fires_exactly_once_per_period() -> None:
    rig = ready()
    start = rig.now()
    rig.stimer(0, ENABLE | PERIODIC | sintx(TIMER_SINT), MS)
    fired = 0
    for _ in range(10 * 7):  # poll every 1/7 ms for 10 ms
        rig.advance(MS // 7 + 1)
        rig.poll()
        if timer_msg(rig):
            fired += 1
            assert timer_msg(rig)[4] <= rig.now()  # type: ignore[index]
            rig.consume(TIMER_SINT)
    assert fired == (rig.now() - start) // MS


def test_periodic_catch_up_skips_missed_periods() -> None:
    rig = ready()
    start = rig.now()
    rig.stimer(1, ENABLE | PERIODIC | sintx(TIMER_SINT), MS)
    rig.advance_to(start + 3 * MS + MS // 2)
    assert rig.poll() == start + 4 * MS  # keeps the grid, next period strictly in the future
    assert timer_msg(rig)[4] == start + MS  # type: ignore[index]
    assert rig.apics[0].vectors == [VEC]


def test_periodic_tick_on_busy_slot_is_dropped() -> None:
    rig = ready()
    start = rig.now()
    rig.part.vps[0].synic.post_message(TIMER_SINT, SynicMessage(0x55, b"busy"))
    rig.stimer(0, ENABLE | PERIODIC | sintx(TIMER_SINT), MS)
    rig.advance_to(start + MS)
    assert rig.poll() == start + 2 * MS  # re-armed although nothing was delivered
    hdr = rig.slot_header(TIMER_SINT)
    assert hdr[0] == 0x55 and hdr[2] == 0  # KVM: no MessagePending for a periodic tick
    assert rig.part.vps[0].synic.timers[0].dropped == 1
    rig.consume(TIMER_SINT, eom=False)
    rig.advance_to(start + 2 * MS)
    rig.poll()
    assert timer_msg(rig)[4] == start + 2 * MS  # type: ignore[index]


def test_one_shot_on_busy_slot_stays_pending_until_eom() -> None:
    rig = ready()
    synic = rig.part.vps[0].synic
    synic.post_message(TIMER_SINT, SynicMessage(0x55, b"busy"))
    deadline = rig.now() + MS
    rig.stimer(2, AUTO | sintx(TIMER_SINT), deadline)
    rig.advance_to(deadline + 10)
    assert rig.poll() is None
    assert rig.slot_header(TIMER_SINT)[0] == 0x55
    assert rig.slot_header(TIMER_SINT)[2] == 1  # MessagePending
    assert synic.timers[2].pending
    rig.advance(50)
    rig.consume(TIMER_SINT)  # EOM -> the timer's buffer goes out
    got = timer_msg(rig)
    assert got == (HvMessageType.TIMER_EXPIRED, 24, 0, 2, deadline, deadline + 60)
    assert not synic.timers[2].pending
    assert rig.rd(stimer_config_msr(2)) & ENABLE == 0


def test_timer_message_goes_out_when_sim_enabled_later() -> None:
    rig = make()
    rig.ok(HvMsr.SCONTROL, 1)
    rig.sint(TIMER_SINT)
    rig.advance_to(1000)
    rig.stimer(0, AUTO | sintx(TIMER_SINT), 2000)
    rig.advance_to(2000)
    rig.poll()
    assert rig.part.vps[0].synic.timers[0].pending
    rig.ok(HvMsr.SIMP, SIM_GPA | 1)
    assert timer_msg(rig)[4] == 2000  # type: ignore[index]


def test_direct_mode_asserts_vector_without_message() -> None:
    rig = ready()
    start = rig.now()
    rig.stimer(1, ENABLE | PERIODIC | DIRECT | 0xD1 << 4, MS)
    for step in range(1, 6):
        rig.advance_to(start + step * MS)
        rig.poll()
    assert rig.apics[0].vectors == [0xD1] * 5
    assert rig.mem.read(SIM_GPA, 4096) == bytes(4096)


def test_direct_one_shot_disables_and_lost_interrupt_is_not_retried() -> None:
    rig = ready()
    rig.apics[0].accept = False
    deadline = rig.now() + MS
    rig.stimer(0, AUTO | DIRECT | 0x60 << 4, deadline)
    rig.advance_to(deadline)
    assert rig.poll() is None
    assert rig.apics[0].vectors == [0x60]
    assert rig.rd(stimer_config_msr(0)) & ENABLE == 0


def test_timers_are_per_vp_and_independent() -> None:
    rig = ready()
    rig.enable(1, sim=SIM_GPA + 0x4000, sief=None)
    rig.sint(TIMER_SINT, 0x99, vp=1)
    now = rig.now()
    rig.stimer(0, AUTO | sintx(TIMER_SINT), now + 3 * MS, vp=1)
    rig.stimer(0, AUTO | sintx(TIMER_SINT), now + 5 * MS, vp=0)
    assert rig.part.poll(1) == now + 3 * MS
    assert rig.part.poll(0) == now + 5 * MS
    rig.advance_to(now + 3 * MS)
    assert rig.part.poll(1) is None and rig.part.poll(0) == now + 5 * MS
    assert rig.apics[1].vectors == [0x99] and rig.apics[0].vectors == []


def test_reprogramming_cancels_pending_and_armed() -> None:
    rig = ready()
    rig.stimer(0, ENABLE | PERIODIC | sintx(TIMER_SINT), MS)
    rig.ok(stimer_config_msr(0), PERIODIC | sintx(TIMER_SINT))
    assert rig.poll() is None


def test_lazy_bit_is_stored_and_delivery_not_deferred() -> None:
    rig = ready()
    deadline = rig.now() + MS
    rig.stimer(0, AUTO | LAZY | sintx(TIMER_SINT), deadline)
    rig.advance_to(deadline)
    rig.poll()
    assert timer_msg(rig) is not None


# -- fuzzing ---------------------------------------------------------------------------------------------------
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
CONFIGS = st.one_of(U64, st.integers(min_value=0, max_value=(1 << 20) - 1))
COUNTS = st.one_of(U64, st.integers(min_value=0, max_value=50 * MS))
OPS = st.lists(
    st.tuples(st.sampled_from(["config", "count", "advance", "eom", "consume"]), st.integers(0, 3), CONFIGS, COUNTS),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_random_config_and_count_never_raise(ops: list[tuple[str, int, int, int]]) -> None:
    rig = ready(vp_count=1)
    for op, n, config, count in ops:
        if op == "config":
            assert rig.wr(stimer_config_msr(n), config) in (None, GP)
        elif op == "count":
            assert rig.wr(stimer_count_msr(n), count) is None
        elif op == "advance":
            rig.advance(count % (20 * MS))
        elif op == "eom":
            rig.ok(HvMsr.EOM, 0)
        else:
            rig.consume(config & 15)
        deadline = rig.poll()
        now = rig.now()
        assert deadline is None or deadline > now  # anything due was fired by this poll
        for sint in range(16):
            raw = rig.slot(sint)
            if struct.unpack_from("<I", raw)[0] == HvMessageType.TIMER_EXPIRED:
                _, _, exp, dlv = struct.unpack_from("<IIQQ", raw, 16)
                assert exp <= dlv <= now  # never early
