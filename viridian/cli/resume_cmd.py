"""``viridian resume SNAPSHOT``: continue a run saved with ``viridian run --snapshot-at T --snapshot F``.

Also :func:`take_snapshot`, the end of such a ``viridian run``. The file is data only and checked completely
(snapshot_format.py, snapshot_state.py): a bad file is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from viridian.cli.inputs import out_file
from viridian.errors import UserError

SNAPSHOT_OPTIONS = ("image", "hv", "xen", "libvirt", "preset", "cpuid", "vcpus", "mem", "max_ticks", "quantum",
                    "pcpus", "ple_window", "ple_gap", "ap_start", "fast", "cmdline")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("resume", help="continue a run from a snapshot",
                              description="Load a snapshot (checked first: a corrupt, truncated, foreign or "
                              "version 1 file is refused), rebuild the machine and run on; output and exit "
                              "status as viridian run.")
    p.add_argument("snapshot", help="a file written by viridian run --snapshot")
    p.add_argument("--stats-json", metavar="FILE", type=out_file, help="write the stats JSON ('-' = stdout, no serial echo)")
    p.add_argument("--json", action="store_true", help="print the stats JSON only")
    p.add_argument("-q", "--quiet", action="store_true", help="no serial echo, no summary")
    p.set_defaults(func=run)


def check_snapshot_args(args: argparse.Namespace) -> None:
    """``run --snapshot-at T --snapshot F``: together, one partition, 1 <= T < --max-ticks."""
    if (args.snapshot_at is None) != (args.snapshot is None):
        raise UserError("--snapshot-at TICKS and --snapshot FILE go together")
    if args.snapshot_at is None:
        return
    if args.others or not 1 <= args.snapshot_at < args.max_ticks:
        raise UserError("--snapshot-at: one partition (no --with), at a time from 1 tick to below --max-ticks")
    for flag in ("initrd", "device"):
        if getattr(args, flag, None):
            raise UserError(f"--snapshot-at: not with --{flag} (a snapshot does not carry it yet)")


def take_snapshot(args: argparse.Namespace, machine: Any, result: Any) -> int:
    """After ``run --snapshot-at T``: write the snapshot if the run stopped at T (status 0), else say that the
    guest ended first (status 2, nothing written)."""
    from viridian.machine.snapshot import prepare, save

    if result.status != "snapshot":
        code = f", code {result.code}" if result.code is not None else ""
        print(f"viridian: the guest ended ({result.status}{code}) at tick {machine.clock.tsc()}, before "
              f"--snapshot-at {args.snapshot_at}: no snapshot written", file=sys.stderr)
        return 2
    machine.ports.serial.sink = None  # live output belongs to this process, not to the machine
    prepare(machine)
    at = save(machine, args.snapshot, {k: getattr(args, k, None) for k in SNAPSHOT_OPTIONS}, args.snapshot_at)
    print(f"viridian: snapshot at tick {at} (asked for {args.snapshot_at}) written to {args.snapshot} "
          f"(continue with: viridian resume {args.snapshot})", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from viridian.cli.run_cmd import _status
    from viridian.machine.host import Host
    from viridian.machine.snapshot import engine_note, resume
    from viridian.report.run import stats_json, summary_lines

    m, rr, manifest = resume(args.snapshot)
    if (note := engine_note(manifest)) is not None and not args.json:
        print(note, file=sys.stderr)
    before = len(m.ports.serial.output)
    host = Host([m], manifest["options"]["pcpus"])
    host.rr = rr
    result = host.run()[0]
    data = stats_json(m)
    if args.json:
        print(json.dumps(data, indent=2))
        return _status(result)
    if not (args.quiet or args.stats_json == "-"):
        sys.stdout.write(bytes(m.ports.serial.output[before:]).decode("utf-8", errors="replace"))
        sys.stdout.flush()
        print(f"viridian: resumed {args.snapshot} at tick {manifest['time']['tsc']}", file=sys.stderr)
        for line in summary_lines(m):
            print(line, file=sys.stderr)
    if args.stats_json == "-":
        print(json.dumps(data, indent=2))
    elif args.stats_json:
        try:
            Path(args.stats_json).write_text(json.dumps(data, indent=2), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {args.stats_json}: {exc.strerror or exc}") from None
    return _status(result)
