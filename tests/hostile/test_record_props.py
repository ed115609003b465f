"""Issue 17 item 2, property: any mutation of a genuine replay record is refused in one line or replays --
never a traceback, never a process started or code run from a string, never a write outside the paths the
command line names (an audit hook, viridian.fuzz.inputs.Guard, watches opens for writing, renames, removals,
subprocess/os.system/exec and unpickling while main(argv) runs in-process)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.cli.main import main
from viridian.fuzz.inputs import Guard, _import_everything
from viridian.machine.record_schema import OPTION_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "fixtures" / "build" / "hello.elf"

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False),
                      st.text(max_size=40), st.sampled_from(["/etc/passwd", "$(id)", "../x", str(HELLO)]))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KEYS = [*OPTION_SCHEMA, "stats_json", "trace", "record", "snapshot", "replay", "json", "snapshot_at", "func"]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures")], check=True)
    d = tmp_path_factory.mktemp("records")
    (d / "out").mkdir()
    rec = d / "genuine.rec"
    assert main(["run", str(HELLO), "--quiet", "--mem", "8", "--max-ticks", "2000", "--record", str(rec)]) in (0, 103)
    data = json.loads(rec.read_text())
    data["options"].update(vcpus=256, mem=2)  # valid data the machine refuses: no guest runs in this test
    _import_everything()
    return d, data


def test_record_options_are_the_schema() -> None:
    from viridian.cli.run_cmd import RECORDED_OPTIONS

    assert set(RECORDED_OPTIONS) <= set(OPTION_SCHEMA)
    assert not {"stats_json", "trace", "record", "snapshot", "snapshot_at", "replay"} & set(OPTION_SCHEMA)


@settings(max_examples=300)
@given(edits=st.lists(st.tuples(st.sampled_from(["options", "images", "outcome", "host_events", "top"]),
                                st.sampled_from([*KEYS, "path", "sha256", "result", "wall_clock", "format",
                                                 "version"]), json_value), min_size=1, max_size=4))
def test_mutated_records_are_inert(genuine: tuple[Path, dict[str, Any]], edits: list[tuple[str, str, Any]]) -> None:
    d, base = genuine
    data = json.loads(json.dumps(base))
    for where, key, value in edits:
        if key in ("vcpus", "mem") and type(value) is int and 0 < value < 4096:
            continue  # a valid size: a real (slow) machine would be built
        box = data if where == "top" else data.get(where)
        if isinstance(box, list):
            box = box[0] if box and isinstance(box[0], dict) else None
        if isinstance(box, dict):
            box[key] = value
    rec = d / "mutated.rec"
    rec.write_text(json.dumps(data))
    guard = Guard.get()
    guard.events.clear()
    guard.allowed, guard.named = (str(d / "out"),), set()
    err = io.StringIO()
    from contextlib import redirect_stderr, redirect_stdout

    guard.active = True
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            status = main(["run", "--replay", str(rec), "--quiet", "--stats-json", str(d / "out" / "s.json")])
    finally:
        guard.active = False
    assert guard.events == []
    assert status in (1, 2), err.getvalue()  # refused (2), or replayed and found different (1)
    lines = [x for x in err.getvalue().splitlines() if not x.startswith("viridian: note:")]
    assert len(lines) == 1 and "Traceback" not in err.getvalue()
    assert not list((d / "out").iterdir())


def test_the_guard_sees_what_it_must(tmp_path: Path) -> None:
    """The oracle itself: a write outside the allowed places and a subprocess are both recorded."""
    guard = Guard.get()
    guard.events.clear()
    guard.allowed, guard.named = (str(tmp_path / "ok"),), set()
    guard.active = True
    try:
        (tmp_path / "stray.txt").write_text("x")
        subprocess.run(["true"], check=False)
        eval(compile("1 + 1", "<string>", "eval"))
    finally:
        guard.active = False
    kinds = " ".join(guard.events)
    assert "stray.txt" in kinds and "subprocess.Popen" in kinds and "<string>" in kinds
