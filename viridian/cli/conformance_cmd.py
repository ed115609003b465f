"""``viridian conformance``: the TLFS conformance suite (fixtures/guests/conformance) on viridian."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from viridian.cli.grammar import add_engine_option, chosen_engine
from viridian.cli.inputs import out_file, out_file_named
from viridian.config.presets import PRESETS
from viridian.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("conformance", help="run the TLFS conformance suite image on viridian",
                              description="Boot the conformance suite (a multiboot image that also boots on "
                              "QEMU/KVM, Xen, Hyper-V) on viridian, print pass/fail/skip by TLFS area, write JSON "
                              "and JUnit XML. Exit status 1 on any failure.")
    p.add_argument("--hv", metavar="FLAGS", help="QEMU hv-* flags")
    p.add_argument("--xen", metavar="GROUPS", help="Xen viridian groups")
    p.add_argument("--libvirt", metavar="FILE.xml", help="libvirt domain XML")
    p.add_argument("--preset", metavar="NAME", help=f"one of: {', '.join(PRESETS)} (default recommended)")
    p.add_argument("--cpuid", action="append", default=[], metavar="EDIT", help="CPUID edit (see viridian run)")
    p.add_argument("--vcpus", type=int, default=2, metavar="N", help="number of vCPUs (default 2, not 1 as elsewhere: the "
                   "IPI, INIT-SIPI and cross-vCPU flush tests need a second vCPU and are skipped on one)")
    p.add_argument("--mem", type=int, default=None, metavar="MiB", help="guest RAM (default 128)")
    p.add_argument("--cmdline", default="", metavar="TEXT", help="suite options, e.g. 'only=hypercall'")
    p.add_argument("--image", metavar="PATH", help="another suite image (default: the shipped conformance guest)")
    p.add_argument("--matrix", action="store_true",
                   help="run every preset (none, xen-3.4, recommended, all) on 1, 2, 4 and 65 vCPUs")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout only (no table)")
    p.add_argument("--json-file", metavar="FILE", type=out_file, help="write the results as JSON ('-' = stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines, no table (exit status only)")
    p.add_argument("--from-tap", action="append", default=[], metavar="SERIAL.LOG",
                   help="read the suite's serial log from another hypervisor (QEMU/KVM, Xen, Hyper-V) instead of "
                   "running it; repeat to compare logs side by side")
    p.add_argument("--junit", metavar="FILE.xml", type=out_file_named, help="write JUnit XML")
    p.add_argument("--verbose", action="store_true", help="list every test, not only failures")
    add_engine_option(p)
    from viridian.fanout.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viridian.config.cpuid_edits import parse_edit
    from viridian.config.presets import load_config
    from viridian.conformance.runner import run_suite, suite_image

    if args.from_tap:
        return _report(args, "", _from_tap(args))
    image = suite_image(args.image)
    edits = tuple(parse_edit(e) for e in args.cpuid)
    plan: list[tuple[str, Any, int]] = []
    if args.matrix:
        if any((args.hv, args.xen, args.libvirt, args.preset)):
            raise UserError("--matrix runs the presets itself; drop --hv/--xen/--libvirt/--preset")
        if args.engine is not None:
            raise UserError("--matrix runs the default engine; drop --engine")
        return _report(args, str(image), _matrix(args, image))
    else:
        if not 1 <= args.vcpus <= 256:
            raise UserError(f"--vcpus {args.vcpus}: choose 1..256")
        given = [(k, v) for k, v in (("hv", args.hv), ("xen", args.xen), ("libvirt", args.libvirt),
                                     ("preset", args.preset)) if v]
        label = " ".join(f"--{k} {v}" for k, v in given) or "--preset recommended"
        config = load_config(hv=args.hv, xen=args.xen, libvirt_path=args.libvirt,
                             preset=args.preset if given else "recommended")
        plan = [(label.removeprefix("--preset "), config, args.vcpus)]
    runs = []
    quiet = args.json or args.quiet or args.json_file == "-"
    for i, (label, config, vcpus) in enumerate(plan, 1):
        if edits:
            config = config.replace(cpuid_edits=edits)
        if not quiet and len(plan) > 1:
            print(f"[{i}/{len(plan)}] {label} on {vcpus} vCPU(s)...", file=sys.stderr, flush=True)
        runs.append(run_suite(config, label, image, vcpus, args.cmdline, args.mem, engine=chosen_engine(args)))
    return _report(args, str(image), runs)


def _matrix(args: argparse.Namespace, image: Path) -> list[dict[str, Any]]:
    """Every preset x vCPU count as fan-out cells (in this process, or --workers/--cluster)."""
    from viridian.conformance.runner import MATRIX_PRESETS, MATRIX_VCPUS, result
    from viridian.fanout import fan_out
    from viridian.fanout.cli import options
    from viridian.fanout.plans import conformance_cells

    workers, cluster = options(args)
    cells = conformance_cells(tuple(MATRIX_PRESETS), tuple(MATRIX_VCPUS), args.cmdline, str(image), args.mem,
                              tuple(args.cpuid))
    runs = []
    for r in fan_out(cells, workers, cluster, what="conformance matrix",
                     quiet=args.json or args.quiet or args.json_file == "-"):
        if r.value is not None:
            runs.append(r.value)
        else:  # the cell's worker failed twice: an incomplete run, named
            kw = r.cell.kwargs
            runs.append(result(f"{kw['offer']} x{kw['vcpus']}", kw["offer"], kw["vcpus"], kw["cmdline"], "",
                               "error", None, r.error or "cell failed"))
    return runs


def _from_tap(args: argparse.Namespace) -> list[dict[str, Any]]:
    from viridian.conformance.tap_log import from_tap

    mixed = [f"--{k.replace('_', '-')}" for k in ("hv", "xen", "libvirt", "preset", "image", "matrix", "mem")
             if getattr(args, k)] + (["--cpuid"] if args.cpuid else []) + (["--cmdline"] if args.cmdline else [])
    if mixed:
        raise UserError(f"--from-tap reads a finished run; drop {', '.join(mixed)}")
    return [from_tap(path) for path in args.from_tap]


def _report(args: argparse.Namespace, image: str, runs: list[dict[str, Any]]) -> int:
    """Table (or JSON on stdout), JSON file, JUnit; exit status 1 on any failure or incomplete run."""
    from viridian.conformance.junit import junit_xml

    data = {"image": image, "runs": runs,
            "ok": all(r["complete"] and r["counts"]["fail"] == 0 for r in runs)}
    if args.junit:
        Path(args.junit).write_text(junit_xml(runs), encoding="utf-8")
    if args.json_file and args.json_file != "-":
        Path(args.json_file).write_text(json.dumps(data, indent=2), encoding="utf-8")
    if args.json or args.json_file == "-":
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        print("\n".join(lines(runs, verbose=args.verbose)))
    return 0 if data["ok"] else 1


def lines(runs: list[dict[str, Any]], verbose: bool = False) -> list[str]:
    from viridian.conformance.runner import by_area
    from viridian.report.text import table_wrapped

    areas = sorted({t["area"] for r in runs for t in r["tests"]})
    per = [by_area(r) for r in runs]
    out = ["== conformance: pass/fail/skip by TLFS area"]
    head = ["area", *[r["name"] for r in runs]]
    body = [[a, *[("{pass}/{fail}/{skip}".format(**p[a]) if a in p else "-") for p in per]] for a in areas]
    body.append(["total", *["{pass}/{fail}/{skip}".format(**r["counts"]) for r in runs]])
    out += table_wrapped(head, body, right=tuple(range(1, len(head))))  # a matrix wraps to the terminal width
    for r in runs:
        bad = [t for t in r["tests"] if t["outcome"] == "fail"]
        if not r["hyperv_present"]:
            out.append(f"  {r['name']}: Hyper-V interface not present (Hyper-V tests skipped)")
        if not r["complete"]:
            out.append(f"  {r['name']}: INCOMPLETE: {r['problem']}")
        for t in bad:
            out.append(f"  {r['name']}: FAIL {t['number']} {t['area']}: {t['what']} [{t['ref']}]")
            out += [f"      {d}" for d in t["diagnostics"]]
        if verbose:
            for t in r["tests"]:
                extra = f" ({t['reason']})" if t["reason"] else ""
                out.append(f"  {r['name']}: {t['outcome']:4} {t['number']:3} {t['area']}: {t['what']}{extra}")
    ok = all(r["complete"] and r["counts"]["fail"] == 0 for r in runs)
    out.append("conformance: " + ("PASS" if ok else "FAIL") + f" ({len(runs)} run(s))")
    return out
