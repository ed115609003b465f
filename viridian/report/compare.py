"""Two runs of one guest side by side (``viridian compare``): exits by reason, APIC exits, per-interrupt
figures and the difference in negotiation. Engine-free: works on two stats JSON documents."""

from __future__ import annotations

from typing import Any

from viridian.report.text import table, wrap


def _per(n: int, d: int) -> float | None:
    return round(n / d, 3) if d else None


def _change(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    if a == 0:
        return "" if b == 0 else "new"
    return f"{(b - a) * 100 / a:+.1f} %"


def rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: name, A, B, B - A, change in %."""
    out: list[dict[str, Any]] = []

    def add(name: str, va: float | None, vb: float | None) -> None:
        diff = None if va is None or vb is None else round(vb - va, 3)
        out.append({"figure": name, "a": va, "b": vb, "diff": diff, "change": _change(va, vb)})

    ea, eb = a["exits"], b["exits"]
    add("exits (total)", ea["total"], eb["total"])
    for reason in sorted(set(ea["by_reason"]) | set(eb["by_reason"])):
        add(f"  {reason}", ea["by_reason"].get(reason, 0), eb["by_reason"].get(reason, 0))
    aa, ab = a["apic"], b["apic"]
    add("APIC exits (EOI+ICR+TPR)", aa["eoi_exits"] + aa["icr_exits"] + aa["tpr_exits"],
        ab["eoi_exits"] + ab["icr_exits"] + ab["tpr_exits"])
    for key in ("eoi_exits", "icr_exits", "tpr_exits", "eoi_avoided", "interrupts_delivered", "ipis_sent"):
        add(f"  {key.replace('_', ' ')}", aa[key], ab[key])
    ia, ib = aa["interrupts_delivered"], ab["interrupts_delivered"]
    add("exits per interrupt", _per(ea["total"], ia), _per(eb["total"], ib))
    add("EOI exits per interrupt", _per(aa["eoi_exits"], ia), _per(ab["eoi_exits"], ib))
    add("hypercalls", ea["by_reason"].get("hypercall", 0), eb["by_reason"].get("hypercall", 0))
    add("TLB flushes (vCPUs)", a["tlb_flushes"], b["tlb_flushes"])
    add("virtual time (ms)", round(a["time"]["tsc"] * 1000 / a["time"]["tsc_hz"], 3),
        round(b["time"]["tsc"] * 1000 / b["time"]["tsc_hz"], 3))
    return out


def negotiation_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    na, nb = a["negotiation"], b["negotiation"]
    rb = {r["key"]: r for r in nb["enlightenments"]}

    def status(r: dict[str, Any]) -> str:
        got = ", ".join(f"{k} x{n}" for k, n in r["got"].items())
        return r["status"] + (f" ({got})" if got else "")

    pairs = [(r, rb[r["key"]]) for r in na["enlightenments"] if r["key"] in rb]
    changes = [{"key": x["key"], "title": x["title"], "a": status(x), "b": status(y)}
               for x, y in pairs if (x["used"], x["got"]) != (y["used"], y["got"])]
    fa = {f["observed"] for f in na["fallbacks"]}
    fb = {f["observed"] for f in nb["fallbacks"]}
    da, db = na["guest_decisions"], nb["guest_decisions"]
    return {
        "used_in_both": [x["title"] for x, y in pairs if x["status"] == y["status"] == "used"],
        "changes": changes,
        "offered_only_in_a": [x["title"] for x, y in pairs if x["offered"] and not y["offered"]],
        "offered_only_in_b": [y["title"] for x, y in pairs if y["offered"] and not x["offered"]],
        "fallbacks_only_in_a": sorted(fa - fb), "fallbacks_only_in_b": sorted(fb - fa),
        "decisions": {k: {"a": da.get(k), "b": db.get(k)} for k in {**da, **db} if da.get(k) != db.get(k)},
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def comparison_lines(a: dict[str, Any], b: dict[str, Any], label_a: str, label_b: str) -> list[str]:
    res = [f"{r['status']}" + (f" {r['code']}" if r.get("code") is not None else "")
           for r in (a["result"], b["result"])]
    body = [["result", res[0], res[1], "", ""]]
    body += [[r["figure"], _fmt(r["a"]), _fmt(r["b"]), _fmt(r["diff"]), r["change"]] for r in rows(a, b)]
    out = [f"== compare: A = {label_a}, B = {label_b}"]
    out += table(["figure", "A", "B", "B - A", "change"], body, right=(1, 2, 3, 4))
    d = negotiation_diff(a, b)
    out.append("")
    out += wrap(f"negotiation: used in both: {', '.join(d['used_in_both']) or 'none'}")
    if d["changes"]:
        out += table(["enlightenment", "A", "B"], [[c["title"], c["a"], c["b"]] for c in d["changes"]])
    for key, text in (("offered_only_in_a", "offered only in A"), ("offered_only_in_b", "offered only in B"),
                      ("fallbacks_only_in_a", "fall-backs only in A"), ("fallbacks_only_in_b", "fall-backs only in B")):
        out += wrap(f"  {text}: {', '.join(d[key]) or 'none'}")
    for k, v in d["decisions"].items():
        out.append(f"  guest decided {k}: A {v['a'] or '-'}, B {v['b'] or '-'}")
    return out
