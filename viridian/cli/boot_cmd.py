"""``viridian boot BZIMAGE``: boot a Linux kernel (bzImage or vmlinux) through the x86 64-bit boot protocol on
the emulated Hyper-V partition; the kernel's console (COM1) goes to stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from viridian.cli.grammar import add_engine_option, chosen_engine, data_on_stdout
from viridian.cli.inputs import out_file
from viridian.config.cpuid_edits import parse_edit
from viridian.config.enlightenments import Enlightenments
from viridian.config.presets import PRESETS, load_config
from viridian.errors import UserError
from viridian.machine.linux_machine import DEFAULT_APPEND
from viridian.report.run import EXIT_STATUS, stats_json, summary_lines

DEFAULT_PRESET = "linux"  # the recommended offer minus reenlightenment (viridian.config.presets)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("boot", help="boot a Linux kernel (bzImage or vmlinux) on emulated vCPUs",
                              description="Boot KERNEL with the Linux x86 64-bit boot protocol (zero page, e820, "
                              "HW-reduced ACPI RSDP/XSDT/FADT/DSDT/MADT) under the emulated Hyper-V partition; "
                              f"default offer {DEFAULT_PRESET!r}. The kernel log (COM1) goes to stdout; exit status "
                              "as for viridian run (an ACPI power-off is exit 0; "
                              + ", ".join(f"{k}={v}" for k, v in EXIT_STATUS.items()) + ").")
    p.add_argument("kernel", help="a bzImage (boot protocol >= 2.12, 64-bit) or an uncompressed vmlinux ELF")
    p.add_argument("--initrd", metavar="FILE", help="initramfs (cpio) loaded high, passed in ramdisk_image/size "
                   "(initramfs.cpio: the one viridian ships)")
    p.add_argument("--append", default=DEFAULT_APPEND, metavar="TEXT",
                   help=f"kernel command line (default {DEFAULT_APPEND!r})")
    p.add_argument("--hv", metavar="FLAGS", help="QEMU hv-* flags, e.g. hv-relaxed,hv-vapic,hv-vpindex")
    p.add_argument("--xen", metavar="GROUPS", help="Xen viridian groups, e.g. base,freq")
    p.add_argument("--libvirt", metavar="FILE.xml", help="libvirt domain XML with <hyperv>")
    p.add_argument("--preset", metavar="NAME", help=f"one of: {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    p.add_argument("--cpuid", action="append", default=[], metavar="EDIT",
                   help="edit the offered leaves: LEAF.REG+BITS / -BITS / =VALUE (repeatable)")
    p.add_argument("--vcpus", type=int, default=1, metavar="N", help="number of vCPUs (default 1; APs start by INIT-SIPI)")
    p.add_argument("--mem", type=int, default=256, metavar="MiB", help="guest RAM in MiB (default 256)")
    p.add_argument("--max-ticks", dest="max_ticks", type=int, default=60_000_000_000, metavar="N",
                   help="virtual-time budget in TSC ticks (2 GHz; default 30 s of guest time)")
    p.add_argument("--quantum", type=int, default=200_000, metavar="TICKS", help="scheduler time slice (a single vCPU runs at least 20,000,000 ticks at a time, to the next timer deadline)")
    add_engine_option(p)
    p.add_argument("--machine", choices=("pc", "minimal"), default="pc",
                   help="pc (default): PIC, PIT, I/O APIC and the other PC devices (QEMU -machine pc); minimal: none")
    p.add_argument("--report", action="store_true", help="print the negotiation report")
    p.add_argument("--json", action="store_true", help="print the stats JSON (with the report) on stdout only")
    p.add_argument("--stats-json", metavar="FILE", type=out_file,
                   help="write the exit statistics as JSON ('-' = stdout, no console echo)")
    p.add_argument("--trace", metavar="FILE", type=out_file,
                   help="write JSON lines: each exit and its MSR/hypercall/port/interrupt/EOI detail "
                   "('-' = stdout, no console echo; schema: docs/trace.md)")
    p.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol (one thread per vCPU; 127.0.0.1 unless HOST is given)")
    p.add_argument("--gdb-wait", action="store_true", help="with --gdb: wait for gdb before the first instruction")
    p.add_argument("--trace-filter", metavar="KIND[,KIND]",
                   help="keep only these kinds in the trace: msr, hypercall, io, mmio, cpuid, rdtsc, hlt, pause, "
                   "exception, interrupt_window, interrupt, eoi")
    p.add_argument("-q", "--quiet", action="store_true", help="no console echo, no summary")
    p.set_defaults(func=run)


def boot_config(args: argparse.Namespace) -> Enlightenments:
    """The offer: the one given (--hv/--xen/--libvirt/--preset), else DEFAULT_PRESET; then the --cpuid edits."""
    sources = [args.hv, args.xen, args.libvirt, args.preset]
    config = load_config(hv=args.hv, xen=args.xen, libvirt_path=args.libvirt,
                         preset=args.preset if any(sources) else DEFAULT_PRESET)
    if args.cpuid:
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in args.cpuid))
    return config


def run(args: argparse.Namespace) -> int:
    from viridian.guests import guest_path, is_guest_name
    from viridian.machine.linux_machine import linux_machine
    from viridian.machine.trace import open_tracer

    _check_ranges(args)
    config = boot_config(args)
    initrd = str(guest_path(args.initrd)) if args.initrd and is_guest_name(args.initrd) else args.initrd  # by name
    fresh_trace = args.trace not in (None, "-") and not os.path.lexists(args.trace)
    tracer = open_tracer(args.trace, getattr(args, "trace_filter", None))
    t0 = time.perf_counter()
    try:
        machine = linux_machine(config, args.kernel, initrd=initrd, append=args.append, vcpus=args.vcpus,
                                mem_mib=args.mem, max_ticks=args.max_ticks, quantum=args.quantum, tracer=tracer,
                                board=args.machine, engine=chosen_engine(args))
        from viridian.cli.serial_out import LineWriter

        writer = LineWriter(sys.stdout) if not (args.quiet or data_on_stdout(args)) else None
        machine.ports.serial.sink = writer  # the console reaches stdout line by line while the kernel runs
        from viridian.machine.unicorn.debug import start_debugger

        debugger = start_debugger(machine, args.gdb, args.gdb_wait)  # --gdb (waits with --gdb-wait)
        try:
            result = machine.run()
        finally:
            if writer is not None:
                writer.close()
            if debugger is not None:
                debugger.close(machine.result)
    except UserError:  # refused while the kernel is loaded: a refusal leaves no file behind
        if tracer is not None and fresh_trace:
            tracer.close()
            os.unlink(args.trace)
        raise
    finally:
        if tracer is not None:
            tracer.close()
    wall = time.perf_counter() - t0
    data = stats_json(machine)
    data["wall_seconds"] = round(wall, 3)
    if args.json:
        print(json.dumps(data, indent=2))
        return _status(result)
    if not args.quiet:
        for line in summary_lines(machine):
            print(line, file=sys.stderr)
        print(f"viridian: {wall:.2f} s wall, {machine.clock.tsc() / machine.clock.tsc_hz:.2f} s virtual",
              file=sys.stderr)
    if args.report and not data_on_stdout(args):
        from viridian.report.text import negotiation_lines

        title = f"{args.kernel} on {machine.vcpu_count} vCPU(s)"
        print("\n".join(negotiation_lines(data["negotiation"], title=title)))
    if args.stats_json == "-":
        print(json.dumps(data, indent=2))
    elif args.stats_json:
        try:
            with open(args.stats_json, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)
        except OSError as exc:
            raise UserError(f"--stats-json {args.stats_json}: {exc.strerror}") from None
    return _status(result)


def _check_ranges(args: argparse.Namespace) -> None:
    """vCPUs, RAM and time as viridian run checks them (record_schema), and the kernel a regular file of bounded
    size, before any output file is created."""
    from viridian.cli.inputs import IMAGE_MAX, open_input
    from viridian.machine.record_schema import check_options

    check_options({k: getattr(args, k) for k in ("vcpus", "mem", "max_ticks", "quantum")}, "the command line")
    open_input(args.kernel, "kernel", IMAGE_MAX)[0].close()


def _status(result: Any) -> int:
    if result.status == "exit":
        return int(result.code or 0)
    return EXIT_STATUS.get(result.status, 1)
