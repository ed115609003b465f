"""The conformance TAP reader and JUnit writer (engine-free), and `viridian conformance` end to end on a
small TAP-printing guest (the real suite is tested in tests/machine/test_conformance_guest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from viridian.conformance.junit import junit_xml
from viridian.conformance.tap import parse

SAMPLE = """TAP version 13
# viridian conformance suite 1; hypervisor: vendor "Microsoft Hv", interface Hv#1; vCPUs: 2
1..4
ok 1 - identity: 0x40000000 reports max leaf >= 0x40000005 [feature-discovery.md]
ok 2 - msr: VP_RUNTIME reads [vp-properties.md] # SKIP AccessVpRunTimeReg not offered
not ok 3 - hypercall: unknown code returns INVALID_HYPERCALL_CODE [hypercall-interface.md]
#   expected 0x2, got 0x3
ok 4 - platform: the APIC timer fires
# summary: pass=2 fail=1 skip=1
"""


def test_parse_sample() -> None:
    run = parse(SAMPLE)
    assert run.plan == 4 and run.complete and run.counts == {"pass": 2, "fail": 1, "skip": 1}
    t = run.tests[2]
    assert (t.area, t.what, t.ref, t.ok, t.diagnostics) == (
        "hypercall", "unknown code returns INVALID_HYPERCALL_CODE", "hypercall-interface.md", False,
        ["expected 0x2, got 0x3"])
    assert run.tests[1].outcome == "skip" and run.tests[1].reason == "AccessVpRunTimeReg not offered"
    assert run.tests[3].ref == "" and run.hyperv_present


def test_incomplete_and_not_present() -> None:
    run = parse("1..3\nok 1 - a: x\n# Hyper-V interface not present\n")
    assert not run.complete and not run.hyperv_present


@given(st.text(max_size=400))
def test_parser_never_raises(text: str) -> None:
    parse(text)


def test_junit_is_valid_xml_with_counts() -> None:
    tap = parse(SAMPLE)
    run = {"name": "recommended x2", "offer": "recommended", "vcpus": 2, "status": "exit", "exit_code": 1,
           "counts": tap.counts, "complete": True, "problem": "",
           "tests": [{"number": t.number, "area": t.area, "what": t.what, "ref": t.ref, "outcome": t.outcome,
                      "reason": t.reason, "diagnostics": t.diagnostics} for t in tap.tests]}
    root = ET.fromstring(junit_xml([run]).split("\n", 1)[1])
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "1"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("skipped") == "1"
    fail = suite.find("testcase/failure")
    assert fail is not None and fail.get("message") == "expected 0x2, got 0x3"


GUEST = r'''
#include "guest.inc"
        .text
        .globl guest_main
guest_main:
        PARK_IF_NOT_BSP
        PRINT "TAP version 13\n1..3\nok 1 - identity: a [feature-discovery.md]\n"
        PRINT "ok 2 - msr: b # SKIP not offered\nnot ok 3 - hypercall: c [hypercall-interface.md]\n"
        PRINT "#   expected 0x2, got 0x3\n"
        mov eax, 1
        ret
'''


def test_cli_on_a_tap_guest(viridian_asm: Callable[..., Path], tmp_path: Path) -> None:
    image = viridian_asm(GUEST, name="tap")
    junit, js = tmp_path / "r.xml", tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "viridian", "conformance", "--image", str(image), "--vcpus", "1",
                          "--junit", str(junit), "--json-file", str(js)], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    assert "FAIL 3 hypercall: c" in res.stdout and "expected 0x2, got 0x3" in res.stdout
    assert "conformance: FAIL" in res.stdout
    data = json.loads(js.read_text())
    assert data["runs"][0]["counts"] == {"pass": 1, "fail": 1, "skip": 1} and data["runs"][0]["complete"]
    assert ET.parse(junit).getroot().get("failures") == "1"


def test_cli_on_the_real_suite_is_green(tmp_path: Path) -> None:
    """`viridian conformance` on the shipped suite image (built by make -C fixtures): green, valid JUnit."""
    junit = tmp_path / "suite.xml"
    res = subprocess.run([sys.executable, "-m", "viridian", "conformance", "--preset", "recommended", "--vcpus", "2",
                          "--junit", str(junit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "conformance: PASS" in res.stdout
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and int(root.get("tests") or 0) >= 90
    cases = list(root.iter("testcase"))
    assert {c.get("classname") for c in cases} >= {"conformance.recommended.2vcpu.hypercall",
                                                    "conformance.recommended.2vcpu.synic"}
    assert all(float(c.get("time", "x")) >= 0 for c in cases)  # every case has a time (virtual seconds)
    assert sum(float(c.get("time", "0")) for c in cases) > 0
