"""JUnit XML of conformance runs (the schema CI systems read: testsuites/testsuite/testcase with failure and
skipped children)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


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
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{t['area']}",
                                 name=f"{t['number']:03d} {t['what']}" + (f" [{t['ref']}]" if t["ref"] else ""))
            if t["outcome"] == "skip":
                ET.SubElement(case, "skipped", message=t["reason"] or "not offered")
            elif t["outcome"] == "fail":
                fail = ET.SubElement(case, "failure", message=(t["diagnostics"] or ["failed"])[0])
                fail.text = "\n".join(t["diagnostics"])
        if not run["complete"]:
            case = ET.SubElement(suite, "testcase", classname="conformance.run", name="the suite ran to its end")
            fail = ET.SubElement(case, "failure", message=run["problem"] or "incomplete")
            fail.text = run.get("serial_tail", "")
        totals["tests"] += len(run["tests"]) + (0 if run["complete"] else 1)
        totals["failures"] += counts["fail"] + (0 if run["complete"] else 1)
        totals["skipped"] += counts["skip"]
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
