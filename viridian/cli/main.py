"""The ``viridian`` command: one argparse subcommand per module in viridian.cli."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from viridian import __version__
from viridian.errors import UserError

# Each subcommand module exposes register(subparsers) -> None, setting ``func`` on its parser.
_SUBCOMMANDS: list[str] = ["cpuid", "guest_os_id", "run", "compare", "measure", "conformance", "fuzz", "resume",
                           "fetch_kernel", "boot", "guests", "diff_engines"]


DESCRIPTION = """\
Run guests under a model of Hyper-V's enlightenments (the TLFS) on an emulated x86-64 PC, and see what they
negotiate, what exits they take and what each enlightenment saves. Any IMAGE may be a shipped guest's name
(viridian guests lists them)."""

EPILOG = """\
examples:
  viridian run win10 --vcpus 4 --report        a shipped Windows 10-style guest and its negotiation
  viridian compare win7 -a none -b recommended --vcpus 2
  viridian conformance --json > results.json

Output: --json prints JSON on stdout only; FILE options take '-' for stdout. 'viridian COMMAND --help' for more."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``: a subcommand module name) just that subcommand -- importing
    every command's module costs ~70 ms, a fifth of a short run."""
    parser = _Parser(prog="viridian", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an internal error (also VIRIDIAN_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"viridian {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
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


class _ArgError(Exception):
    """A command-line syntax error (argparse), reported in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (the usage is in --help) and never exits the process."""

    def error(self, message: str) -> NoReturn:
        raise _ArgError(f"{self.prog}: error: {message} (see {self.prog} --help)")


EXIT_USER_ERROR, EXIT_INTERNAL = 2, 70  # sysexits.h EX_SOFTWARE; signals: 128 + N (README "Exit status")


def _say(text: str) -> None:
    """One line on stderr, whatever the text holds."""
    line = " | ".join(part for part in str(text).splitlines() if part.strip()) or str(text)
    print(line if len(line) <= 2000 else line[:1997] + "...", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI, callable in-process: returns the exit status (the console script passes it to sys.exit).
    No input gives a traceback: a UserError is one line and status 2; anything unexpected is one line with
    "please report this" and status 70 (the traceback with --debug or VIRIDIAN_DEBUG=1); SIGINT/SIGTERM end
    a run at the next exit boundary with status 130/143 (viridian.machine.interrupt)."""
    from viridian.machine import interrupt
    from viridian.machine.lifetime import machines_closed

    words = list(sys.argv[1:] if argv is None else argv)
    end = words.index("--") if "--" in words else len(words)
    debug = "--debug" in words[:end] or os.environ.get("VIRIDIAN_DEBUG", "") not in ("", "0")
    words = [w for i, w in enumerate(words) if not (i < end and w == "--debug")]
    status = EXIT_INTERNAL
    with interrupt.handlers() as state, machines_closed():  # every Machine the command built is closed
        try:
            status = _dispatch(words)
        except interrupt.Interrupted:
            pass
        except (UserError, _ArgError) as exc:
            _say(f"viridian: error: {exc}" if isinstance(exc, UserError) else f"{exc}")
            status = EXIT_USER_ERROR
        except SystemExit as exc:  # --help / --version
            status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else EXIT_USER_ERROR
        except BrokenPipeError:
            status = 0
        except KeyboardInterrupt:  # a SIGINT handler of our own was not installed (not the main thread)
            state.signum = state.signum or 2
        except OSError as exc:
            if state.signum is None and exc.filename is not None:  # the environment, not a bug: a named file
                _say(f"viridian: error: {exc.filename}: {exc.strerror or type(exc).__name__}")
                status = EXIT_USER_ERROR
            elif state.signum is None:
                status = _internal(exc, debug)
        except Exception as exc:  # RecursionError and MemoryError included: never a traceback
            if state.signum is None:
                status = _internal(exc, debug)
    if state.signum is not None:
        _say(f"viridian: {interrupt.describe()}")
        status = 128 + state.signum
        state.signum = None  # handled: a later run in this process (main is callable in-process) starts clean
    return status


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if debug else "; rerun with --debug (or VIRIDIAN_DEBUG=1) for the traceback"
    _say(f"viridian: internal error: {type(exc).__name__}: {str(exc)[:300]} -- please report this "
         f"with the command line{hint}")
    return EXIT_INTERNAL


@functools.cache
def _parser(only: str | None) -> argparse.ArgumentParser:
    """build_parser, once per process (main(argv) called in-process many times: the input fuzzer)."""
    return build_parser(only)


def _dispatch(words: list[str]) -> int:
    for i, word in enumerate(words, 1):
        if "\0" in word:  # not from a real command line; main(argv) in-process
            raise UserError(f"argument {i} contains a NUL character")
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, smuggled in by surrogateescape
            shown = word.encode("utf-8", "backslashreplace").decode()
            raise UserError(f"argument {i} ({shown!r}) is not valid UTF-8; give text and file names in UTF-8"
                            ) from None
    command = words[0].replace("-", "_") if words and not words[0].startswith("-") else None
    parser = _parser(command if command in _SUBCOMMANDS else None)
    args = parser.parse_args(words)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USER_ERROR
    return func(args)
