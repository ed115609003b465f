"""The one CLI grammar shared by every command.

* ``--json`` is a switch: JSON on stdout and nothing else there (no serial echo, no table).
* ``--json-file FILE``, ``--stats-json FILE``, ``--trace FILE``, ``--csv FILE``: ``-`` means stdout, and then
  stdout carries that data only (as with ``--json``); progress and summaries always go to stderr.
* ``-q/--quiet``: no progress, no summary, no echo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from viridian.errors import UserError

DATA_FILE_OPTIONS = ("json_file", "stats_json", "trace", "csv")


def data_on_stdout(args: argparse.Namespace) -> bool:
    """True when stdout carries data (``--json``, or a data FILE option given as ``-``)."""
    return bool(getattr(args, "json", False)) or any(getattr(args, k, None) == "-" for k in DATA_FILE_OPTIONS)


def add_json_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--json`` (switch) and ``--json-file FILE`` for ``what``."""
    from viridian.cli.inputs import out_file

    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout only")
    p.add_argument("--json-file", metavar="FILE", type=out_file, help=f"write {what} as JSON ('-' = stdout)")


def emit_json(args: argparse.Namespace, data: Any, indent: int | None = 2) -> bool:
    """Write ``data`` where ``--json``/``--json-file`` ask; True when stdout got it (print nothing else there)."""
    text = json.dumps(data, indent=indent)
    path = getattr(args, "json_file", None)
    if path and path != "-":
        try:
            Path(path).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--json-file {path}: {exc.strerror or exc}") from None
    if getattr(args, "json", False) or path == "-":
        print(text)
        return True
    return False


def add_engine_option(p: argparse.ArgumentParser) -> None:
    """``--engine NAME``: which vCPU engine runs the guest (viridian.machine.engines)."""
    from viridian.machine.engines import DEFAULT, ENGINES

    p.add_argument("--engine", choices=sorted(ENGINES), default=None,
                   help=f"vCPU engine (default {DEFAULT}): " + "; ".join(f"{k}: {e.summary}" for k, e in ENGINES.items()))


def chosen_engine(args: argparse.Namespace) -> str:
    """``--engine``, else the default -- or the reference engine, with one line on stderr, when the default's
    compiled hot path cannot be built here (no C compiler)."""
    from viridian.machine.engines import DEFAULT

    name = getattr(args, "engine", None)
    if name == "reference":  # viridian/machine/reference/ENGINE_NOTES.md "Not supported"
        for option, given in (("--gdb", getattr(args, "gdb", None)), ("--snapshot-at", getattr(args, "snapshot_at", None))):
            if given is not None:
                raise UserError(f"{option} needs the fast engine (--engine unicorn)")
    if name:
        return str(name)
    if DEFAULT != "unicorn":
        return DEFAULT
    try:
        from viridian.machine.unicorn.native import library

        library()
    except UserError as exc:
        import sys

        print(f"viridian: {exc}; running the reference engine (--engine reference, slower) instead", file=sys.stderr)
        return "reference"
    return DEFAULT
