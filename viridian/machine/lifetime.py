"""Machines built inside a scope are closed when it ends (issue 19 item 5: nothing kept alive after a run).

``with Machine(...) as m:`` closes one machine; :func:`machines_closed` closes every Machine built while it is
active in this thread (or task context), whatever the code between built -- the CLI wraps each command in it,
the fan-out wraps each cell -- after the command has read results, registers and RAM. Closing is ordered
(viridian/machine/unicorn/teardown.py): engines first, then RAM and native state become garbage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_built: ContextVar[list[Any] | None] = ContextVar("viridian_machines_built", default=None)


@contextmanager
def machines_closed() -> Iterator[None]:
    """Close every Machine built inside the block when the block ends (also on an exception)."""
    built: list[Any] = []
    token = _built.set(built)
    try:
        yield
    finally:
        _built.reset(token)
        for m in built:
            m.close()


def note_built(machine: Any) -> None:
    """Machine.__init__: remember ``machine`` for the innermost active :func:`machines_closed` (if any)."""
    built = _built.get()
    if built is not None:
        built.append(machine)
