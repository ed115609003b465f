"""JUnit XML of conformance runs (the schema CI systems read: testsuites/testsuite/testcase with failure and
skipped children)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any


def classname(run: dict[str, Any], area: str) -> str:
    """``conformance.<offer>.<N>vcpu.<area>``: unique per run, so a --matrix's cases stay apart in CI (which
    keys a case by classname + name); dots and spaces in an offer ("xen-3.4") become '_'."""
    offer = re.sub(r"[^\w+-]+", "_", str(run.get("offer") or "run")).strip("_") or "run"
    return f"conformance.{offer}.{run.get('vcpus', 0)}vcpu.{area}"


def junit_xml(runs: list[dict[str, Any]]) -> str:
    root = ET.Element("testsuites", name="viridian-conformance")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for run in runs:
        counts = run["counts"]
        suite = ET.SubElement(root, "testsuite", name=run["name"], tests=str(len(run["tests"])),
                              failures=str(counts["fail"] + (0 if run["complete"] else 1)),
                              skipped=str(counts["skip"]), errors="0",
                              time=f"{run.get('wall_seconds', 0):.3f}")
        props = ET.SubElement(suite, "properties")
        for key in ("offer", "vcpus", "status", "exit_code"):
            ET.SubElement(props, "property", name=key, value=str(run.get(key)))
        for t in run["tests"]:
            case = ET.SubElement(suite, "testcase", classname=classname(run, t["area"]),
                                 name=f"{t['number']:03d} {t['what']}" + (f" [{t['ref']}]" if t["ref"] else ""),
                                 time=f"{t.get('seconds', 0.0):.6f}")  # virtual seconds on viridian; 0 from a log
            if t["outcome"] == "skip":
                ET.SubElement(case, "skipped", message=t["reason"] or "not offered")
            elif t["outcome"] == "fail":
                fail = ET.SubElement(case, "failure", message=(t["diagnostics"] or ["failed"])[0])
                fail.text = "\n".join(t["diagnostics"])
        if not run["complete"]:
            case = ET.SubElement(suite, "testcase", classname=classname(run, "run"), name="the suite ran to its end",
                                 time="0.000000")
            fail = ET.SubElement(case, "failure", message=run["problem"] or "incomplete")
            fail.text = run.get("serial_tail", "")
        totals["tests"] += len(run["tests"]) + (0 if run["complete"] else 1)
        totals["failures"] += counts["fail"] + (0 if run["complete"] else 1)
        totals["skipped"] += counts["skip"]
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
