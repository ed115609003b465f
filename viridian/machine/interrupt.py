"""SIGINT / SIGTERM (issue 17 item 4): a run stops at the next exit boundary, never inside the engine.

Python runs a signal handler in the main thread between two bytecodes -- possibly inside a ctypes callback
(a Unicorn hook), where an exception cannot propagate ("Exception ignored on calling ctypes callback
function") and would leave the hook half done. So while a guest runs the handler only records the signal;
the host loop (viridian.machine.host) looks at it after every vCPU slice and ends every partition
"interrupted" with its state consistent. The handler does not call uc.emu_stop(): the vCPU loop would treat
an unexplained stop as a spurious return and re-enter the engine, and a slice is short anyway (at most
SOLO_QUANTUM ticks of guest time), so the flag alone stops the run promptly. Outside a guest run (parsing,
loading, writing output) no engine callback can be active and the handler raises Interrupted at once.
The CLI (viridian.cli.main) installs the handlers, prints "interrupted at <virtual time>" and exits 128+N.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal arrived outside a guest run."""


@dataclass
class State:
    signum: int | None = None  # the first SIGINT/SIGTERM received
    running: int = 0  # Host.run nesting: > 0 while a guest may be inside the engine
    tsc: int | None = None  # virtual time at which the run stopped (ticks)
    tsc_hz: int = 0


state = State()


def _handler(signum: int, frame: FrameType | None) -> None:
    # Never raises while a guest runs: this may be executing inside a ctypes callback.
    if state.signum is None:
        state.signum = signum
    if not state.running:
        raise Interrupted(signum)


def pending() -> bool:
    return state.signum is not None


@contextmanager
def handlers() -> Iterator[State]:
    """Install the handlers for the duration of a command (main thread only; elsewhere nothing changes)."""
    state.signum, state.running, state.tsc = None, 0, None
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield state
    except Interrupted:  # arrived while the command was already reporting something: the signal wins
        pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def guest_running() -> Iterator[None]:
    """Around a host loop: signals only set the flag."""
    state.running += 1
    try:
        yield
    finally:
        state.running -= 1


def describe() -> str:
    """The one line the CLI prints."""
    name = signal.Signals(state.signum).name if state.signum is not None else "signal"
    if state.tsc is None:
        return f"interrupted ({name})"
    seconds = state.tsc / state.tsc_hz if state.tsc_hz else 0.0
    return f"interrupted ({name}) at {seconds:.6f} s virtual time (tick {state.tsc:,})"
