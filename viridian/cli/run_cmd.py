"""``viridian run IMAGE``: run a guest on the emulated machine and report how it ended and what it exited for."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from viridian.cli.grammar import add_engine_option, chosen_engine, data_on_stdout
from viridian.cli.inputs import out_file, out_file_named
from viridian.config.cpuid_edits import parse_edit
from viridian.config.presets import PRESETS, load_config
from viridian.errors import UserError
from viridian.report.run import EXIT_STATUS, stats_json, summary_lines

DEFAULT_PRESET = "recommended"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a guest image (ELF64 or flat binary) on emulated vCPUs",
                              description="Run IMAGE under the emulated Hyper-V partition. Serial output goes "
                              "to stdout; the exit status is the guest's exit code, or one of "
                              + ", ".join(f"{k}={v}" for k, v in EXIT_STATUS.items()) + ".")
    p.add_argument("image", nargs="?", help="multiboot kernel, ELF64 (loaded at p_paddr) or flat binary (loaded and "
                   "entered at 0x100000); not needed with --replay")
    p.add_argument("--flat", action="store_true",
                   help="load IMAGE as a flat binary whatever it holds (a text file is refused without it)")
    add_engine_option(p)
    p.add_argument("--hv", metavar="FLAGS", help="QEMU hv-* flags, e.g. hv-relaxed,hv-vapic,hv-vpindex")
    p.add_argument("--xen", metavar="GROUPS", help="Xen viridian groups, e.g. base,freq")
    p.add_argument("--libvirt", metavar="FILE.xml", help="libvirt domain XML with <hyperv>")
    p.add_argument("--preset", metavar="NAME", help=f"one of: {', '.join(PRESETS)} (default {DEFAULT_PRESET} "
                   "when no other source is given)")
    p.add_argument("--cpuid", action="append", default=[], metavar="EDIT",
                   help="edit the offered leaves: LEAF.REG+BITS / -BITS / =VALUE, e.g. 0x40000003.eax-0x10 "
                   "(repeatable; gating follows the edited bits)")
    p.add_argument("--vcpus", type=int, default=1, metavar="N", help="number of vCPUs (default 1)")
    p.add_argument("--mem", type=int, default=128, metavar="MiB", help="guest RAM in MiB (default 128)")
    p.add_argument("--max-ticks", "--max-instructions", dest="max_ticks", type=int, default=20_000_000_000,
                   metavar="N",
                   help="virtual-time budget in TSC ticks (one tick per byte of guest code run, 1000 per exit; "
                   "2 GHz, default 10 s); the run ends 'timeout'. --max-instructions is the same budget")
    p.add_argument("--quantum", type=int, default=200_000, metavar="TICKS", help="scheduler time slice (a single vCPU runs at least 20,000,000 ticks at a time, to the next timer deadline)")
    p.add_argument("--pcpus", type=int, default=None, help="simulated physical CPUs (default: one per vCPU)")
    p.add_argument("--ple-window", type=int, default=4096, metavar="TICKS",
                   help="pause-loop exiting: exit after a PAUSE loop spun this long (0 = off; default 4096)")
    p.add_argument("--ple-gap", type=int, default=128, metavar="TICKS",
                   help="PAUSEs at most this far apart belong to one loop (default 128)")
    p.add_argument("--machine", choices=("pc", "minimal"), default="pc",
                   help="pc (default): the PC a kernel finds under QEMU -machine pc (8259A, 8254 PIT, I/O APIC, "
                        "ports 0x61/0x92/0x80, i8042...); minimal: local APICs, COM1 and the exit port only")
    p.add_argument("--ap-start", choices=("entry", "sipi"), default="entry",
                   help="application processors start at the entry point (default) or wait for INIT-SIPI")
    p.add_argument("--fast", action="store_true",
                   help="virtual time follows the wall clock instead of executed code (not deterministic; "
                   "a periodic timer faster than the emulated handler livelocks the guest)")
    p.add_argument("--cmdline", default="", metavar="TEXT",
                   help="guest command line: a NUL-terminated string at 0x1F000, its address in RCX at entry")
    p.add_argument("--initrd", metavar="FILE[,FILE...]",
                   help="multiboot modules, as QEMU's -initrd for multiboot kernels: FILE is module 1, placed "
                   "page-aligned after the kernel (',' separates modules, text after a space is part of the "
                   "module's string); the multiboot command line is 'IMAGE --cmdline'")
    p.add_argument("--device", action="append", default=[], choices=("hyperv-testdev",),
                   help="add a device QEMU adds only on request: hyperv-testdev (port 0x3000, QEMU "
                   "hw/misc/hyperv_testdev.c: SINT routes and message/event connections for SynIC tests)")
    p.add_argument("--report", action="store_true",
                   help="print the negotiation report: what the guest asked for, used and fell back from")
    p.add_argument("--json", action="store_true", help="print the stats JSON (with the report) on stdout only")
    p.add_argument("--stats-json", metavar="FILE", type=out_file,
                   help="write the exit statistics as JSON ('-' = stdout, no serial echo)")
    p.add_argument("--trace", metavar="FILE", type=out_file,
                   help="write JSON lines: each exit and its MSR/hypercall/port/interrupt/EOI detail "
                   "('-' = stdout, no serial echo; schema: docs/trace.md)")
    p.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol (one thread per vCPU; 127.0.0.1 unless HOST is given)")
    p.add_argument("--gdb-wait", action="store_true", help="with --gdb: wait for gdb before the first instruction")
    p.add_argument("--trace-filter", metavar="KIND[,KIND]",
                   help="keep only these kinds in the trace: msr, hypercall, io, mmio, cpuid, rdtsc, hlt, pause, "
                   "exception, interrupt_window, interrupt, eoi")
    p.add_argument("--with", dest="others", action="append", default=[], metavar="IMAGE[:VCPUS]",
                   help="another partition (same offer) sharing the --pcpus simulated CPUs; repeatable")
    p.add_argument("--with-cmdline", default="", metavar="TEXT", help="command line of the --with partitions")
    p.add_argument("--stop-others", action="store_true",
                   help="end the --with partitions when the first one ends (they are background load)")
    p.add_argument("--record", metavar="FILE", type=out_file_named, help="write the run's inputs and outcome digests for --replay")
    p.add_argument("--replay", metavar="FILE",
                   help="re-run a recorded run with its inputs (options from FILE; IMAGE is ignored) and check "
                   "that exits, serial output and final state are bit-identical (exit 1 if not)")
    p.add_argument("--snapshot-at", type=int, metavar="TICKS",
                   help="stop at this virtual time (TSC ticks) and write a snapshot to --snapshot FILE")
    p.add_argument("--snapshot", metavar="FILE", type=out_file_named, help="where --snapshot-at writes (viridian resume FILE continues)")
    p.add_argument("-q", "--quiet", action="store_true", help="no serial echo, no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viridian.machine.host import Host
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine
    from viridian.machine.trace import open_tracer

    recorded = None
    if args.replay:
        from viridian.machine.replay import read_record

        recorded = read_record(args.replay)
        for key, value in recorded["options"].items():
            setattr(args, key, value)
    from viridian.machine.record_schema import OPTION_SCHEMA, check_options

    check_options({k: getattr(args, k) for k in OPTION_SCHEMA if hasattr(args, k)}, "the command line")
    if not args.image:
        raise UserError("give a guest IMAGE (or --replay FILE)")
    sources = [args.hv, args.xen, args.libvirt, args.preset]
    config = load_config(hv=args.hv, xen=args.xen, libvirt_path=args.libvirt,
                         preset=args.preset if any(sources) else DEFAULT_PRESET)
    if args.cpuid:
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in args.cpuid))
    if args.pcpus is not None and args.pcpus < 1:
        raise UserError("--pcpus must be at least 1")
    if args.ple_window < 0 or args.ple_gap < 0:
        raise UserError("--ple-window and --ple-gap must be >= 0")
    from viridian.cli.resume_cmd import check_snapshot_args

    check_snapshot_args(args)
    image = load_image(args.image, getattr(args, "initrd", None), flat=getattr(args, "flat", False))
    others = [_other(spec) for spec in args.others]
    fresh_trace = args.trace not in (None, "-") and not os.path.lexists(args.trace)
    tracer = open_tracer(args.trace, getattr(args, "trace_filter", None))
    common = dict(mem_mib=args.mem, max_ticks=args.max_ticks, quantum=args.quantum, ple_gap=args.ple_gap,
                  ple_window=args.ple_window, fast=args.fast, ap_start=args.ap_start,
                  cmdline=args.cmdline, board=args.machine, engine=chosen_engine(args))
    try:
        machine = Machine(config, image, vcpus=args.vcpus, tracer=tracer, **common)
        if "hyperv-testdev" in getattr(args, "device", ()):
            from viridian.devices.hyperv_testdev import attach

            attach(machine)
        if recorded is not None:
            machine.wall.replay = [int(t) for t in recorded["host_events"]["wall_clock"]]
        machine.stop_at = args.snapshot_at  # the Host ends the quantum there (viridian.machine.snapshot)
        common["cmdline"] = args.with_cmdline
        extra = [Machine(config, img, vcpus=n, **common) for img, n in others]
        writers = _stream_serial([machine, *extra]) if not (args.quiet or data_on_stdout(args)) else []
        from viridian.machine.unicorn.debug import start_debugger

        debugger = start_debugger(machine, args.gdb, args.gdb_wait)  # --gdb (waits with --gdb-wait)
        try:
            result = Host([machine, *extra], args.pcpus, until_first=args.stop_others).run()[0]
        finally:
            for w in writers:
                w.close()
            if debugger is not None:
                debugger.close(machine.result)
    except UserError:  # refused while building the machine: a refusal leaves no file behind
        if tracer is not None and fresh_trace:
            tracer.close()
            os.unlink(args.trace)
        raise
    finally:
        if tracer is not None:
            tracer.close()
    if args.snapshot_at is not None:
        from viridian.cli.resume_cmd import take_snapshot

        return take_snapshot(args, machine, result)
    data = stats_json(machine)
    if extra:
        data["partitions"] = [stats_json(m) for m in extra]
    replay_differs = _record_or_check(args, recorded, machine, [m.image.path for m in extra], data)
    if args.json:
        print(json.dumps(data, indent=2))
        return 1 if replay_differs else _status(result)
    if not args.quiet:  # the serial output went to stdout while the guests ran (_stream_serial)
        for line in summary_lines(machine):
            print(line, file=sys.stderr)
        for i, m in enumerate(extra, 1):
            for line in summary_lines(m):
                print(line.replace("viridian:", f"viridian: [partition {i}]", 1), file=sys.stderr)
    if args.report and not data_on_stdout(args):
        from viridian.report.text import negotiation_lines

        print("\n".join(negotiation_lines(data["negotiation"], title=_title(args, machine))))
    if args.stats_json == "-":
        print(json.dumps(data, indent=2))
    elif args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
    return 1 if replay_differs else _status(result)


RECORDED_OPTIONS = ("image", "hv", "xen", "libvirt", "preset", "cpuid", "vcpus", "mem", "max_ticks", "quantum",
                    "pcpus", "ple_window", "ple_gap", "ap_start", "fast", "cmdline", "others", "with_cmdline",
                    "stop_others", "initrd", "device", "machine")


def _stream_serial(machines: list[Any]) -> list[Any]:
    """Serial output to stdout as the guests produce it, a line at a time (viridian.cli.serial_out)."""
    from viridian.cli.serial_out import LineWriter

    writers = [LineWriter(sys.stdout, f"[partition {i}] " if i else "") for i in range(len(machines))]
    for m, w in zip(machines, writers, strict=True):
        m.ports.serial.sink = w
    return writers


def _record_or_check(args: argparse.Namespace, recorded: Any, machine: Any, other_images: list[str],
                     data: dict[str, Any]) -> bool:
    """--record: write the record. --replay: compare; True when the replay differs."""
    from viridian.machine.replay import compare, outcome, write_record

    if args.record and machine.result.status != "interrupted":  # a partial run is no record
        images = [args.image, *other_images] + ([args.libvirt] if args.libvirt else [])
        if getattr(args, "initrd", None):
            from viridian.machine.loader import parse_initrd

            images += [path for path, _ in parse_initrd(args.initrd)]  # the modules' bytes are inputs too
        write_record(args.record, {k: getattr(args, k) for k in RECORDED_OPTIONS}, images, machine, data)
    if recorded is None:
        return False
    diff = compare(recorded["outcome"], outcome(machine, data))
    print(f"viridian: replay of {args.replay}: " + ("bit-identical (result, exits, serial, final state)" if not diff
                                                  else "DIFFERS in " + ", ".join(diff)), file=sys.stderr)
    return bool(diff)


def _status(result: Any) -> int:
    if result.status == "exit":
        return int(result.code or 0)
    return EXIT_STATUS.get(result.status, 1)


def _title(args: argparse.Namespace, machine: Any) -> str:
    offer = ", ".join(f"{k} {v}" for k, v in (("--hv", args.hv), ("--xen", args.xen), ("--libvirt", args.libvirt),
                                                ("--preset", args.preset)) if v) or f"--preset {DEFAULT_PRESET}"
    offer += "".join(f", --cpuid {e}" for e in args.cpuid)
    return f"{args.image} on {machine.vcpu_count} vCPU(s), {offer}"


def _other(spec: str) -> tuple[Any, int]:
    """``--with IMAGE[:VCPUS]``."""
    from viridian.machine.loader import load_image
    from viridian.machine.record_schema import with_spec

    path, count = with_spec(spec)
    return load_image(path), count
