"""The ``viridian`` command: one argparse subcommand per module in viridian.cli."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from viridian import __version__
from viridian.errors import UserError

# Each subcommand module exposes register(subparsers) -> None, setting ``func`` on its parser.
_SUBCOMMANDS: list[str] = ["cpuid", "guest_os_id", "run", "compare", "measure", "conformance", "fuzz", "resume",
                           "fetch_kernel", "boot", "guests"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``: a subcommand module name) just that subcommand -- importing
    every command's module costs ~70 ms, a fifth of a short run."""
    parser = argparse.ArgumentParser(prog="viridian", description=__doc__)
    parser.add_argument("--version", action="version", version=f"viridian {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in [only] if only else _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"viridian.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"viridian.cli.{name}_cmd":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = words[0].replace("-", "_") if words and not words[0].startswith("-") else None
    parser = build_parser(command if command in _SUBCOMMANDS else None)
    args = parser.parse_args(words)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except UserError as exc:
        print(f"viridian: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
