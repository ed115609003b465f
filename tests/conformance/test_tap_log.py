"""`viridian conformance --from-tap`: serial logs of the suite from other hypervisors (a stored QEMU TCG run,
tests/data/README.md) become the same runs, table and JUnit as a run on viridian; JUnit keeps every case of a
matrix apart and timed. Engine-free."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from viridian.conformance.junit import junit_xml
from viridian.conformance.runner import result
from viridian.conformance.tap_log import from_tap
from viridian.errors import UserError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "conformance_tap_sample.log"
CLI = [sys.executable, "-m", "viridian", "conformance"]

SUITE = """TAP version 13
# viridian conformance suite 1; hypervisor: vendor "Microsoft Hv", interface Hv#1; vCPUs: 4
1..3
ok 1 - identity: a [feature-discovery.md]
ok 2 - msr: b [vp-properties.md] # SKIP AccessVpRunTimeReg not offered
not ok 3 - hypercall: c [hypercall-interface.md]
#   expected 0x2, got 0x3
# summary: pass=1 fail=1 skip=1
"""


def test_stored_qemu_tcg_log() -> None:
    run = from_tap(SAMPLE)
    assert (run["offer"], run["vcpus"], run["status"]) == ("TCGTCGTCGTCG/none", 2, "log")
    assert run["counts"] == {"pass": 6, "fail": 0, "skip": 86} and run["complete"]
    assert not run["hyperv_present"] and len(run["tests"]) == 92


# (what a capture adds around the suite's output, expected counts, complete)
NOISE = [
    ("SeaBIOS (version 1.16)\r\nBooting from ROM...\r\n\x1b[2J" + SUITE.replace("\n", "\r\n"),
     {"pass": 1, "fail": 1, "skip": 1}, True),
    ("TAP version 13\n1..92\nok 1 - platform: x\n(reset)\n" + SUITE, {"pass": 1, "fail": 1, "skip": 1}, True),
    (SUITE.split("not ok")[0], {"pass": 1, "fail": 0, "skip": 1}, False),  # the log ends mid-run
]


@pytest.mark.parametrize(("text", "counts", "complete"), NOISE, ids=["firmware-crlf", "rebooted", "truncated"])
def test_log_captures(tmp_path: Path, text: str, counts: dict[str, int], complete: bool) -> None:
    log = tmp_path / "com1.log"
    log.write_bytes(text.encode())
    run = from_tap(log)
    assert run["counts"] == counts and run["complete"] is complete
    assert (run["offer"], run["vcpus"]) == ("Microsoft Hv/Hv#1", 4)
    if counts["fail"]:
        assert run["tests"][2]["diagnostics"] == ["expected 0x2, got 0x3"]


@pytest.mark.parametrize(("content", "needle"), [(b"Linux version 6.1\n", "no 'TAP version' line"),
                                                 (None, "not a regular file")])
def test_not_a_suite_log(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "x.log"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=needle):
        from_tap(path)


def test_matrix_junit_cases_are_unique_and_timed() -> None:
    """4 offers x 4 vCPU counts of the same suite: no classname+name pair repeats (CI merges repeats)."""
    runs = [result(f"{o} x{v}", o, v, "", SUITE, "exit", 1, line_times=[0, 0.1, 0.2, 1.0, 3.0, 3.5, 4.0, 5.0])
            for o in ("none", "xen-3.4", "recommended", "all") for v in (1, 2, 4, 65)]
    cases = list(ET.fromstring(junit_xml(runs)).iter("testcase"))
    keys = [(c.get("classname"), c.get("name")) for c in cases]
    assert len(keys) == 16 * 3 and len(set(keys)) == len(keys)
    assert "conformance.xen-3_4.65vcpu.hypercall" in {k[0] for k in keys}
    # each result line's time minus the previous result's (the first: minus the plan line's)
    assert [c.get("time") for c in cases[:3]] == ["0.800000", "2.000000", "0.500000"]


def test_cli_table_junit_and_json_switch(tmp_path: Path) -> None:
    junit = tmp_path / "r.xml"
    res = subprocess.run([*CLI, "--from-tap", str(SAMPLE), "--junit", str(junit)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "TCGTCGTCGTCG/none x2" in res.stdout and "6/0/86" in res.stdout and "conformance: PASS" in res.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("skipped")) == ("92", "86")
    res = subprocess.run([*CLI, "--from-tap", str(SAMPLE), "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["runs"][0]["counts"]["pass"] == 6


def test_cli_failing_log_and_mixed_options(tmp_path: Path) -> None:
    log = tmp_path / "xen.log"
    log.write_text(SUITE)
    res = subprocess.run([*CLI, "--from-tap", str(log)], capture_output=True, text=True)
    assert res.returncode == 1 and "FAIL 3 hypercall: c" in res.stdout
    res = subprocess.run([*CLI, "--from-tap", str(log), "--preset", "all"], capture_output=True, text=True)
    assert res.returncode == 2 and "drop --preset" in res.stderr and len(res.stderr.splitlines()) == 1
