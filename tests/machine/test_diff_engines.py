"""Differential testing between engines (viridian/lab/diff_engines.py, viridian/machine/eventlog.py).

A short slice of ``make diff-engines``: a few fixture guests at 1 and 2 vCPUs on the fast engine against the
fast engine with every fast path forced off (which must agree), and, once it is registered, against the
reference engine. The comparer and the event log are also fed deliberately different outcomes and logs, and
must name the difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from viridian.cli.main import main
from viridian.config.presets import load_config
from viridian.errors import UserError
from viridian.guests import guest_path
from viridian.lab import diff_engines as D
from viridian.lab.diff_side import INPROCESS_ENV, isolated
from viridian.machine.eventlog import REGISTERS, EventLog
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine

FAST_PAIR = ("unicorn", "unicorn:all")
SLICE = [("hello.elf", 2), ("smc.elf", 2), ("apic_timer.elf", 1), ("ipi.elf", 2), ("win10.elf", 1), ("win10.elf", 2)]
REFERENCE = pytest.mark.skipif("reference" not in D.available(),
                               reason="the reference engine is not registered yet (viridian/machine/engines.py)")


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides in this process (as test_fastpath_equivalence.py does for the fast paths): quicker, and what
    lets a test swap the comparer's input; the reference engine's cases keep a process per side."""
    monkeypatch.setenv(INPROCESS_ENV, "1")


@pytest.mark.parametrize(("guest", "vcpus"), SLICE)
def test_a_guest_has_the_same_outcome_with_every_fast_path_off(guest: str, vcpus: int, in_process: None) -> None:
    cell = D.guest_cell(guest, vcpus, FAST_PAIR)
    assert cell["same"], cell["first"]
    assert cell["status"][0] == cell["status"][1] == "exit"


@REFERENCE
@pytest.mark.parametrize(("guest", "vcpus"), [("hello.elf", 2), ("apic_timer.elf", 1), ("win10.elf", 2)])
def test_a_guest_has_the_same_outcome_on_the_reference_engine(guest: str, vcpus: int) -> None:
    cell = D.guest_cell(guest, vcpus, ("unicorn", "reference"))
    assert cell["same"], cell["first"]


def _outcome(guest: str = "win10.elf", vcpus: int = 2) -> dict[str, Any]:
    return D.observe(D.parse_spec("unicorn"), guest, vcpus)


# (what is changed in side B, the path the report must name first)
MUTATIONS = [
    (lambda o: o["result"].update(status="crash"), "result.status"),
    (lambda o: o.update(serial=o["serial"].replace("\n", "\nextra line\n", 1)), "serial line 2"),
    (lambda o: o["exits"]["by_reason"].update(cpuid=o["exits"]["by_reason"].get("cpuid", 0) + 1), "exits.by_reason.cpuid"),
    (lambda o: o["exits"]["by_msr"].setdefault("0x40000070", {"read": 0, "write": 0}).update(write=9),
     "exits.by_msr.0x40000070.write"),
    (lambda o: o["exits"]["by_port"].update({"0x0080": 3}), "exits.by_port.0x0080"),
    (lambda o: o["time"].update(tsc=o["time"]["tsc"] + 1), "time.tsc"),
    (lambda o: o["clocks"].__setitem__(1, o["clocks"][1] + 2), "clocks[1]"),
]


@pytest.mark.parametrize(("mutate", "path"), MUTATIONS)
def test_the_comparer_names_a_deliberate_difference_first(mutate: Any, path: str) -> None:
    a = _outcome()
    b = json.loads(json.dumps(a))
    assert D.compare(a, b) == []
    mutate(b)
    diffs = D.compare(a, b)
    assert diffs and diffs[0].path == path, [d.path for d in diffs]


def test_a_known_difference_is_set_apart_only_between_two_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    diffs = [D.Difference("time.tsc", 1, 2), D.Difference("clocks[0]", 1, 2)]
    two = [D.EngineSpec("unicorn"), D.EngineSpec("reference")]
    spun = [{"exits": {"by_hypercall": {"0x0008": 4}}}] * 2
    real, known = D.split_known(two, spun, diffs)  # none known: vn_stub raises the partition clock (test_exit_clock)
    assert [d.path for d in real] == ["time.tsc", "clocks[0]"] and not known
    monkeypatch.setitem(D.KNOWN, "time.tsc", "explained")
    real, known = D.split_known(two, spun, diffs)
    assert [d.path for d in real] == ["clocks[0]"] and [k["path"] for k in known] == ["time.tsc"]
    assert known[0]["why"] == "explained"
    real, known = D.split_known([D.EngineSpec("unicorn"), D.EngineSpec("unicorn", "all")], spun, diffs)
    assert len(real) == 2 and not known


def test_engine_bookkeeping_events_are_not_compared() -> None:
    a = _outcome()
    b = json.loads(json.dumps(a))
    b["events"]["tb_patch_failed"] = 5
    assert D.compare(a, b) == []
    assert "exits.events" in D.NOT_COMPARED


def _machine(guest: str, vcpus: int, cmdline: str = "") -> Machine:
    return Machine(load_config(preset="recommended"), load_image(guest_path(guest)), vcpus=vcpus, cmdline=cmdline)


def _record(guest: str, vcpus: int, cmdline: str = "") -> list[Any]:
    with _machine(guest, vcpus, cmdline) as m:
        log = EventLog("record").attach(m)
        m.run()
        assert m.result is not None and m.result.status == "exit"
    return log.entries


def _replay(entries: list[Any], guest: str, vcpus: int, cmdline: str = "", disable: str = "") -> EventLog:
    with D._environment(disable), _machine(guest, vcpus, cmdline) as m:
        log = EventLog("replay", entries).attach(m)
        m.run()
        log.finish()
    return log


@pytest.mark.parametrize(("guest", "vcpus"), [("ipi.elf", 2), ("apic_timer.elf", 1), ("stimer.elf", 2)])
@pytest.mark.parametrize("disable", ["", "all"])
def test_a_replay_of_the_event_log_meets_every_entry(guest: str, vcpus: int, disable: str) -> None:
    entries = _record(guest, vcpus)
    kinds = {e[0] for e in entries}
    assert kinds == {"slice", "kick"}  # IPIs and timers are logged as kicks between slice ends
    log = _replay(entries, guest, vcpus, disable=disable)
    assert log.divergence is None, log.divergence.describe()
    assert log.pos == len(entries)


def test_the_first_divergence_names_the_vcpu_clock_rip_and_registers() -> None:
    entries = _record("win10.elf", 2, "ticks=20")
    slices = [i for i, e in enumerate(entries) if e[0] == "slice" and e[1] == 1]
    k = slices[len(slices) // 2]
    e = list(entries[k])
    regs = list(e[6])
    regs[REGISTERS.index("rbx")] ^= 0x10
    e[6] = tuple(regs)
    bad = [*entries[:k], tuple(e), *entries[k + 1:]]
    log = _replay(bad, "win10.elf", 2, "ticks=20")
    div = log.divergence
    assert div is not None and div.index == k and div.kind == "slice" and div.vcpu == 1
    assert div.ticks == e[4] and div.rip == e[5]
    assert list(div.fields) == ["rbx"]
    text = div.describe()
    assert f"vCPU 1 at clock {e[4]}" in text and f"RIP {e[5]:#x}" in text and "rbx" in text


@pytest.mark.parametrize("disable", ["", "all"])  # block entry (vn_tb_enter) and the block hook (vn_block)
def test_a_slice_that_ends_elsewhere_is_named_as_a_stop_point(disable: str) -> None:
    entries = _record("hello.elf", 2)
    k = next(i for i, e in enumerate(entries) if e[0] == "slice" and e[4] - e[3] > 1000)
    e = list(entries[k])
    e[4] -= 7  # as if the recording had stopped a few bytes sooner, inside an instruction of the replay
    log = _replay([*entries[:k], tuple(e), *entries[k + 1:]], "hello.elf", 2, disable=disable)
    div = log.divergence  # the replay steps to it and the instruction that holds it passes it
    assert div is not None and div.kind == "stop" and div.index == k
    logged, got = div.fields["ticks"]
    assert logged == e[4] < got < e[4] + 7
    e[4] = got  # an instruction boundary inside the block: the replay lands on it exactly (there the
    log = _replay([*entries[:k], tuple(e), *entries[k + 1:]], "hello.elf", 2, disable=disable)  # (registers
    div = log.divergence  # are not the log's)
    assert div is not None and div.kind == "slice" and div.index == k and "ticks" not in div.fields
    assert div.fields["rip"][0] != div.fields["rip"][1]


def test_a_run_that_goes_past_or_stops_short_of_the_log_is_a_divergence() -> None:
    entries = _record("hello.elf", 2)
    short = _replay(entries[:-1], "hello.elf", 2)
    assert short.divergence is not None and short.divergence.kind == "extra"
    longer = _replay([*entries, entries[-1]], "hello.elf", 2)
    assert longer.divergence is not None and longer.divergence.kind == "missing"


def test_the_cli_compares_and_names_the_first_difference(monkeypatch: pytest.MonkeyPatch, in_process: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff-engines", "--guests", "hello", "--vcpus", "1", "--engines", ",".join(FAST_PAIR),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["cells"][0]["same"] and data["engines"] == list(FAST_PAIR)

    real = D.observe

    def skewed(spec: D.EngineSpec, guest: str, vcpus: int) -> dict[str, Any]:
        out = real(spec, guest, vcpus)
        if spec.disable:
            out["exits"]["by_reason"]["hlt"] = out["exits"]["by_reason"].get("hlt", 0) + 1
        return out

    monkeypatch.setattr(D, "observe", skewed)
    assert main(["diff-engines", "--guests", "hello", "--vcpus", "1", "--engines", ",".join(FAST_PAIR)]) == 1
    captured = capsys.readouterr()
    assert "DIFFERS" in captured.out
    assert "first: hello.elf x1: exits.by_reason.hlt" in captured.err


@pytest.mark.parametrize("argv", [["--engines", "unicorn,warp"], ["--engines", "unicorn"],
                                  ["--engines", "unicorn,unicorn:warp_drive"], ["--guests", "nosuch"],
                                  ["--vcpus", "0"], ["--guests", "none"], ["--linux", "{text}"],
                                  ["--linux", "/nonexistent/vmlinuz"]])
def test_bad_options_are_one_user_error(argv: list[str], capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a kernel\n")
    assert main(["diff-engines", *[a.format(text=text) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1


def test_each_side_runs_in_a_process_of_its_own_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INPROCESS_ENV, raising=False)
    assert isolated()
    cell = D.guest_cell("hello.elf", 1, FAST_PAIR)
    assert cell["same"] and cell["status"] == ["exit", "exit"]


def test_the_default_pair_is_reference_when_registered() -> None:
    a, b = D.default_pair()
    assert a == "unicorn" and b == ("reference" if "reference" in D.available() else "unicorn:all")
    with pytest.raises(UserError):
        D.parse_spec("reference:all")
