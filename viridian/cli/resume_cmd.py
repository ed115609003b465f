"""``viridian resume SNAPSHOT``: continue a run saved with ``viridian run --snapshot-at N --snapshot F``."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from viridian.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("resume", help="continue a run from a snapshot",
                              description="Load a snapshot (validated first: a corrupt or truncated file is "
                              "refused), rebuild the machine and run on; output and exit status as viridian run.")
    p.add_argument("snapshot", help="a file written by viridian run --snapshot")
    p.add_argument("--stats-json", metavar="FILE", help="write the stats JSON ('-' = stdout)")
    p.add_argument("--json", action="store_true", help="print the stats JSON only")
    p.add_argument("--quiet", action="store_true", help="no serial echo, no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viridian.cli.run_cmd import _status
    from viridian.config.cpuid_edits import parse_edit
    from viridian.config.presets import load_config
    from viridian.machine.host import Host
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine
    from viridian.machine.report import stats_json, summary_lines
    from viridian.machine.snapshot import read_header, restore

    header, payload = read_header(args.snapshot)
    o = header["options"]
    path = header["image"]["path"]
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        raise UserError(f"the snapshot's image {path} is missing") from None
    if digest != header["image"]["sha256"]:
        raise UserError(f"the image {path} changed since the snapshot (sha256 differs)")
    given = any(o.get(k) for k in ("hv", "xen", "libvirt", "preset"))
    config = load_config(hv=o.get("hv"), xen=o.get("xen"), libvirt_path=o.get("libvirt"),
                         preset=o.get("preset") if given else "recommended")
    if o.get("cpuid"):
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in o["cpuid"]))
    m = Machine(config, load_image(path), vcpus=o["vcpus"], mem_mib=o["mem"], max_ticks=o["max_ticks"],
                quantum=o["quantum"], ple_gap=o["ple_gap"], ple_window=o["ple_window"], fast=o["fast"],
                ap_start=o["ap_start"], cmdline=o["cmdline"])
    restore(m, payload)
    before = len(m.ports.serial.text())
    result = Host([m], o.get("pcpus")).run()[0]
    data = stats_json(m)
    if args.json:
        print(json.dumps(data, indent=2))
        return _status(result)
    if not args.quiet:
        sys.stdout.write(m.ports.serial.text()[before:])
        sys.stdout.flush()
        print(f"viridian: resumed {args.snapshot} at tick {header['tsc']}", file=sys.stderr)
        for line in summary_lines(m):
            print(line, file=sys.stderr)
    if args.stats_json == "-":
        print(json.dumps(data, indent=2))
    elif args.stats_json:
        Path(args.stats_json).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return _status(result)
