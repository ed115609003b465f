"""A TAP 13 reader for the conformance suite's serial output (engine-free).

Lines: ``ok N - AREA: WHAT [TLFS page]`` / ``not ok N - ...`` with an optional ``# SKIP reason`` (or
``# TODO``), diagnostics ``#   ...`` after a result, the plan ``1..N`` and a ``# summary:`` comment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

RESULT = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?(.*?)\s*(?:#\s*(SKIP|TODO)\b\s*(.*))?$", re.I)
PLAN = re.compile(r"^1\.\.(\d+)")
NAME = re.compile(r"^(?:(?P<area>[\w-]+):\s*)?(?P<what>.*?)\s*(?:\[(?P<ref>[^\]]+)\])?$")


@dataclass
class TapTest:
    number: int
    ok: bool
    area: str
    what: str
    ref: str
    directive: str = ""  # SKIP | TODO | ""
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    seconds: float = 0.0  # time since the previous result (or the plan) line, when the log carries line times

    @property
    def outcome(self) -> str:
        if self.directive == "SKIP":
            return "skip"
        return "pass" if self.ok else "fail"


@dataclass
class TapRun:
    tests: list[TapTest]
    plan: int | None
    comments: list[str]
    bail_out: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "skip": 0}
        for t in self.tests:
            out[t.outcome] += 1
        return out

    @property
    def complete(self) -> bool:
        """The plan was printed and every planned test reported."""
        return self.plan is not None and self.plan == len(self.tests) and self.bail_out is None

    @property
    def hyperv_present(self) -> bool:
        return not any("Hyper-V interface not present" in c for c in self.comments)


def parse(text: str, line_times: list[float] | None = None) -> TapRun:
    """Read TAP from a serial log. ``line_times``: when each line of ``text`` was complete (seconds), to time
    the tests; without it every test's ``seconds`` is 0."""
    tests: list[TapTest] = []
    plan: int | None = None
    comments: list[str] = []
    bail: str | None = None
    times = line_times or []
    last: float | None = None
    for i, raw in enumerate(text.splitlines()):
        line = raw.rstrip()
        at = times[i] if i < len(times) else None
        if m := RESULT.match(line):
            n = int(m.group(2)) if m.group(2) else len(tests) + 1
            name = NAME.match(m.group(3) or "")
            assert name is not None
            took = max(0.0, at - last) if at is not None and last is not None else 0.0
            tests.append(TapTest(n, m.group(1).lower() == "ok", name.group("area") or "other",
                                 name.group("what") or "", name.group("ref") or "",
                                 (m.group(4) or "").upper(), (m.group(5) or "").strip(), seconds=took))
            last = at
        elif m := PLAN.match(line):
            plan = int(m.group(1))
            last = at
        elif line.startswith("Bail out!"):
            bail = line[len("Bail out!"):].strip()
        elif line.startswith("#"):
            body = line[1:]
            if tests and body.startswith("  "):
                tests[-1].diagnostics.append(body.strip())
            else:
                comments.append(body.strip())
    return TapRun(tests, plan, comments, bail)
