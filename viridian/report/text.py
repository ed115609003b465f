"""Plain-text rendering of the negotiation report (fixed-width tables that fit 100 columns)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ",
          right: Sequence[int] = ()) -> list[str]:
    """Left-aligned columns; numeric columns and those in ``right`` right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [i in right or (all(isinstance(r[i], int | float) for r in rows) and bool(rows))
               for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return indent + "  ".join(c.rjust(w) if numeric[i] else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return [line(cells[0]), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def wrap(text: str, width: int = 100) -> list[str]:
    """One logical line wrapped at ``width``, continuation lines indented."""
    return textwrap.wrap(text, width, subsequent_indent="      ", break_on_hyphens=False) or [""]


def _yn(v: bool | None) -> str:
    return "-" if v is None else "yes" if v else "no"


def negotiation_lines(rep: dict[str, Any], *, title: str = "", timeline_limit: int = 40) -> list[str]:
    out = [f"== negotiation report{': ' + title if title else ''}"]
    g = rep["guest"]
    out.append(f"guest OS ID  {g['os_id']}  {g['os'] or 'never written (hypercall page stays disabled)'}")
    for w in g["writes"][1:]:
        out.append(f"             rewritten to {w['value']} by vCPU {w['vcpu']} at {w['time_us']} us: {w['os']}")
    names = [c["leaf"] for c in rep["cpuid_leaves"]]
    leaves = ", ".join(names[:14]) + (f", ... ({len(names) - 14} more; all in the JSON)" if len(names) > 14 else "")
    out += wrap(f"CPUID read   {leaves or 'none'}")
    if rep["guest_decisions"]:
        out += wrap("guest says   " + ", ".join(f"{k}={v}" for k, v in rep["guest_decisions"].items()))
    out.append("")
    rows = []
    for r in rep["enlightenments"]:
        if r["status"] == "not offered" and not r["got"]:
            continue
        first = f"vCPU {r['first']['vcpu']} @ {r['first']['time_us']} us" if r["first"] else ""
        # what the guest got back: its faults/HV_STATUS answers, "ok" when every access succeeded
        got = ", ".join(f"{k} x{n}" for k, n in r["got"].items()) or ("ok" if r["used"] else "-")
        rows.append([r["title"], _yn(r["offered"]), _yn(r["recommended"]), r["status"], first, got])
    out += table(["enlightenment", "offered", "recommended", "status", "first use", "got"], rows)
    hidden = [r["title"] for r in rep["enlightenments"] if r["status"] == "not offered" and not r["got"]]
    if hidden:
        out += wrap(f"  not offered and not tried: {', '.join(hidden)}")
    out.append("")
    mech_rows = [[job, ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"]
                 for job, counts in rep["mechanisms"].items()]
    out += table(["job", "how the guest did it (counts)"], mech_rows)
    out.append("")
    if rep["fallbacks"]:
        out.append("fall-backs observed:")
        for f in rep["fallbacks"]:
            out += wrap(f"  {f['observed']} x{f['count']} instead of {f['instead_of']}: {f['reason']}")
    else:
        out.append("fall-backs observed: none")
    out.append("")
    tl = rep["timeline"]
    rows = [[e["time_us"], e["vcpu"], e["what"], e["result"]] for e in tl[:timeline_limit]]
    out.append(f"timeline (first use of each MSR, hypercall, CPUID leaf, APIC register; {len(tl)} entries):")
    out += table(["time us", "vCPU", "what", "result"], rows)
    if len(tl) > timeline_limit:
        out.append(f"  ... {len(tl) - timeline_limit} more (all of them in the stats JSON under negotiation.timeline)")
    return out
