"""What the enlightenments save on Debian's kernel (issue 18 item 2): ``viridian compare`` on the cloud kernel
with the test initramfs, offers none / xen-3.4 / recommended, at 1 and 4 vCPUs, as one Markdown table per vCPU
count (README "What the enlightenments save on Debian's kernel"). ``make linux-compare`` runs it.

Each pair (none vs recommended, xen-3.4 vs recommended, none vs xen-3.4) is one ``viridian compare --json`` child
process; an offer met in two pairs must give the same figures (runs are deterministic) or the table says so.
Every run must end with the init program's ``exit 0`` through the exit port; a run that does not is reported with
its status and first bad log line. ``--save DIR`` keeps the JSON documents, ``--load DIR`` rebuilds the tables
from them without running anything.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

OFFERS = ("none", "xen-3.4", "recommended")
PAIRS = (("none", "recommended"), ("xen-3.4", "recommended"), ("none", "xen-3.4"))
APPEND = "console=ttyS0 panic=-1 nokaslr viridian.iters=40"
INITRD = Path(__file__).resolve().parents[2] / "fixtures" / "build" / "initramfs.cpio"
INIT_EXIT = "viridian-init: exit 0"
BAD = ("Oops", "BUG:", "WARNING:", "general protection", "Kernel panic", "Marking TSC unstable",
       "Unable to calibrate", "MP-BIOS bug", "unstable")
REASONS = ("io", "mmio", "msr_read", "msr_write", "rdtsc", "cpuid", "hypercall", "hlt", "pause", "interrupt_window",
           "exception")


def compare_cmd(kernel: str, a: str, b: str, vcpus: int, initrd: str = str(INITRD)) -> list[str]:
    """The exact ``viridian compare`` command line of one pair."""
    return [sys.executable, "-m", "viridian", "compare", kernel, "--initrd", initrd, "--append", APPEND,
            "--a", a, "--b", b, "--vcpus", str(vcpus), "--json"]


def check(side: dict[str, Any]) -> str | None:
    """None if the run ended with the init program's exit 0; else its status and first bad log line."""
    res = side["result"]
    serial = side.get("serial", "")
    if res["status"] == "exit" and res["code"] == 0 and INIT_EXIT in serial:
        return None
    lines = serial.splitlines()
    bad = next((ln for ln in lines if any(k in ln for k in BAD)), lines[-1] if lines else "(no output)")
    head = " ".join(str(x) for x in (res["status"], res.get("code"), res.get("detail")) if x not in (None, ""))
    return f"{head}: {bad.strip()}"


def _workload_timer_irqs(serial: str) -> int | None:
    """Timer interrupts taken during the workload: LOC (local APIC timer) + HVS (Hyper-V stimer), as counted by
    the init program from /proc/interrupts."""
    m = re.search(r"workload interrupts:(.*)", serial)
    if m is None:
        return None
    counts = dict(re.findall(r"(\w+)\+(\d+)", m.group(1)))
    return int(counts.get("LOC", 0)) + int(counts.get("HVS", 0))


def figures(side: dict[str, Any]) -> dict[str, float | int | None]:
    """The table's figures of one run."""
    ex, apic, mech = side["exits"], side["apic"], side["negotiation"]["mechanisms"]
    by, msr = ex["by_reason"], ex["by_msr"]
    irqs = apic["interrupts_delivered"]
    out: dict[str, float | int | None] = {"exits (total)": ex["total"]}
    out |= {f"  {r}": by.get(r, 0) for r in REASONS}
    out["  other"] = ex["total"] - sum(by.get(r, 0) for r in REASONS)
    out["APIC exits: EOI"] = apic["eoi_exits"]
    out["APIC exits: ICR"] = apic["icr_exits"]
    out["APIC exits: TPR"] = apic["tpr_exits"]
    out["EOIs avoided (APIC assist)"] = apic["eoi_avoided"]
    out["interrupts delivered"] = irqs
    out["EOI exits per interrupt"] = round(apic["eoi_exits"] / irqs, 3) if irqs else None
    out["exits per interrupt"] = round(ex["total"] / irqs, 1) if irqs else None
    ipi = mech["ipi"]
    out["IPIs sent"] = apic["ipis_sent"]
    out["IPI hypercalls"] = ipi["cluster_ipi_hypercall"] + ipi["cluster_ipi_ex_hypercall"]
    out["IPI exits per IPI"] = (round((apic["icr_exits"] + out["IPI hypercalls"]) / apic["ipis_sent"], 2)
                                if apic["ipis_sent"] else None)
    out["idle: HLT exits"] = mech["idle"]["hlt"]
    out["idle: GUEST_IDLE reads"] = mech["idle"]["guest_idle"]
    out["timer: TSC-deadline writes"] = msr.get("0x000006e0", {}).get("write", 0)
    out["timer: LAPIC timer programming"] = mech["timer"]["apic_timer_programming"]
    out["timer: stimer MSR writes"] = mech["timer"]["stimer_msr"]
    out["timer interrupts in the workload"] = _workload_timer_irqs(side.get("serial", ""))
    out["TLB flush hypercalls"] = mech["tlb"]["flush_hypercall"] + mech["tlb"]["flush_ex_hypercall"]
    out["virtual time (ms)"] = round(side["time"]["tsc"] * 1000 / side["time"]["tsc_hz"], 1)
    return out


def _fmt(v: float | int | None) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _change(a: float | int | None, b: float | int | None) -> str:
    if a is None or b is None or (a == 0 and b == 0):
        return ""
    return "new" if a == 0 else f"{(b - a) * 100 / a:+.0f} %"


def table(vcpus: int, sides: dict[str, dict[str, Any]], notes: list[str]) -> list[str]:
    """The Markdown table of one vCPU count (offers whose run failed show their failure instead)."""
    lines = [f"**{vcpus} vCPU{'s' if vcpus > 1 else ''}**", "",
             "| figure | none | xen-3.4 | recommended | xen-3.4 vs none | recommended vs none |",
             "|---|--:|--:|--:|--:|--:|"]
    figs = {o: figures(s) for o, s in sides.items() if check(s) is None}
    for o, s in sides.items():
        if (why := check(s)) is not None:
            notes.append(f"{vcpus} vCPU(s), {o}: {why}")
    names = next(iter(figs.values())).keys() if figs else []
    for name in names:
        v = [figs[o][name] if o in figs else None for o in OFFERS]
        lines.append(f"| {name} | {' | '.join(_fmt(x) for x in v)} | {_change(v[0], v[1])} | {_change(v[0], v[2])} |")
    return [*lines, ""]


def collect(pairs: dict[tuple[str, str], dict[str, Any]], vcpus: int, notes: list[str]) -> dict[str, Any]:
    """offer -> its run (first pair that has it); a second run of the offer must give the same figures."""
    sides: dict[str, dict[str, Any]] = {}
    for (a, b), doc in pairs.items():
        for offer, side in ((a, doc["a"]), (b, doc["b"])):
            if offer not in sides:
                sides[offer] = side
            elif check(side) is None and check(sides[offer]) is None and figures(side) != figures(sides[offer]):
                notes.append(f"{vcpus} vCPU(s), {offer}: two runs differ (not deterministic)")
    return sides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="linux_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--kernel", help="the kernel (default: viridian fetch-kernel's cached Debian kernel)")
    p.add_argument("--vcpus", default="1,4", help="comma-separated vCPU counts (default 1,4)")
    p.add_argument("--save", metavar="DIR", help="keep each pair's JSON in DIR")
    p.add_argument("--load", metavar="DIR", help="build the tables from DIR's JSON; run nothing")
    args = p.parse_args(argv)
    kernel = args.kernel
    if kernel is None and args.load is None:
        from viridian.cli.fetch_kernel_cmd import fetch_kernel

        kernel = str(fetch_kernel())
    notes: list[str] = []
    out: list[str] = []
    for vcpus in (int(x) for x in args.vcpus.split(",")):
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        for a, b in PAIRS:
            name = f"{a}-{b}-{vcpus}.json"
            if args.load:
                path = Path(args.load) / name
                if not path.exists():
                    notes.append(f"{vcpus} vCPU(s), {a} vs {b}: no {path}")
                    continue
                try:
                    text = path.read_text()
                except (OSError, UnicodeDecodeError) as exc:
                    notes.append(f"{vcpus} vCPU(s), {a} vs {b}: {path}: {exc}")
                    continue
            else:
                assert kernel is not None
                cmd = compare_cmd(kernel, a, b, vcpus)
                print(f"linux-compare: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    err = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
                    notes.append(f"{vcpus} vCPU(s), {a} vs {b}: compare exit status {res.returncode}: {err}")
                    continue
                text = res.stdout
                if args.save:
                    Path(args.save).mkdir(parents=True, exist_ok=True)
                    (Path(args.save) / name).write_text(text)
            try:
                pairs[(a, b)] = json.loads(text)
            except ValueError as exc:
                notes.append(f"{vcpus} vCPU(s), {a} vs {b}: not a compare document ({exc})")
        try:
            out += table(vcpus, collect(pairs, vcpus, notes), notes)
        except (KeyError, TypeError, AttributeError, ZeroDivisionError) as exc:
            notes.append(f"{vcpus} vCPU(s): a malformed compare document ({type(exc).__name__}: {exc})")
    print("\n".join(out))
    for n in notes:
        print(f"linux-compare: {n}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
