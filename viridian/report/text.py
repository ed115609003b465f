"""Plain-text rendering of the negotiation report and of every table (rich, fitting the terminal width)."""

from __future__ import annotations

import io
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def terminal_width() -> int | None:
    """The width tables must fit: $COLUMNS, else the terminal's when stdout is one, else None (no limit: a
    pipe or a file gets every table at its natural width, the same on every machine)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) >= 20:
        return int(cols)
    try:
        if sys.stdout.isatty():
            return shutil.get_terminal_size((100, 24)).columns
    except (AttributeError, ValueError, OSError):  # a replaced or closed stdout
        pass
    return None


# header, a rule of dashes under it, then the rows: plain ASCII, no frame (rich's box layout, 8 lines of 4)
_RULE = box.Box("    \n    \n -  \n    \n    \n -  \n    \n    \n", ascii=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ",
          right: Sequence[int] = (), width: int | None = None) -> list[str]:
    """Left-aligned columns; numeric columns and those in ``right`` right-aligned. Rendered by rich to fit
    ``width`` (default :func:`terminal_width`): cells wrap when the table is wider than that."""
    limit = width if width is not None else terminal_width()
    numeric = [i in right or (all(isinstance(r[i], int | float) for r in rows) and bool(rows))
               for i in range(len(headers))]
    t = Table(box=_RULE, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for i, h in enumerate(headers):
        t.add_column(Text(str(h)), justify="right" if numeric[i] else "left", overflow="fold")
    for r in rows:
        t.add_row(*[Text("" if c is None else str(c)) for c in r])
    buf = io.StringIO()
    console = Console(file=buf, width=max(20, (limit or 100_000) - len(indent)), color_system=None,
                      force_terminal=False, highlight=False, emoji=False, markup=False)
    console.print(t)
    return [(indent + line).rstrip() for line in buf.getvalue().splitlines()]


def table_wrapped(headers: Sequence[str], rows: Sequence[Sequence[Any]], keep: int = 1, indent: str = "  ",
                  right: Sequence[int] = (), width: int | None = None) -> list[str]:
    """A wide table (a matrix) as several tables, each with the first ``keep`` columns and as many of the
    others as fit ``width`` (default :func:`terminal_width`; no limit: one table)."""
    limit = width if width is not None else terminal_width()
    whole = table(headers, rows, indent, right, width=10**5)
    if limit is None or max(map(len, whole), default=0) <= limit:
        return whole
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) + 2 for i in range(len(headers))]
    groups: list[list[int]] = []
    room = limit - len(indent) - sum(widths[:keep])
    for i in range(keep, len(headers)):
        if not groups or sum(widths[j] for j in groups[-1]) + widths[i] > room:
            groups.append([])
        groups[-1].append(i)
    out: list[str] = []
    for g in groups:
        cols = list(range(keep)) + g
        right_g = [n for n, c in enumerate(cols) if c in right]
        out += ([""] if out else []) + table([headers[c] for c in cols], [[r[c] for c in cols] for r in rows],
                                             indent, right_g, width=limit)
    return out


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
