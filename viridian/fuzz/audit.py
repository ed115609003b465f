"""The audit hook of the host-input fuzzer (viridian.fuzz.inputs): while ``active`` it records process creation,
code compiled or run from strings, unpickling, and writes, renames or removals outside the allowed paths."""

from __future__ import annotations

import os
import sys
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
          "pty.spawn", "os.startfile")
_FS_CHANGE = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
              "os.symlink", "os.link", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.mkfifo")


class Guard:
    """One audit hook per process (hooks cannot be removed); it records only while ``active``."""

    _instance: Guard | None = None

    def __init__(self) -> None:
        self.active = False
        self.allowed: tuple[str, ...] = ()  # directories a case may write into
        self.named: set[str] = set()  # paths named on the command line (writing them is what was asked)
        self.events: list[str] = []

    @classmethod
    def get(cls) -> Guard:
        if cls._instance is None:
            cls._instance = Guard()
            sys.addaudithook(cls._instance._hook)
        return cls._instance

    def _ok(self, path: Any) -> bool:
        if isinstance(path, int):
            return True  # an fd already open (os.fdopen)
        name = os.fsdecode(path) if isinstance(path, bytes | os.PathLike | str) else str(path)
        full = os.path.abspath(name)
        return full in self.named or any(full.startswith(a + os.sep) for a in self.allowed)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = (*args, None, None)[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags > 0 and flags & _WRITE_FLAGS)
            if writing and not self._ok(path):
                self.events.append(f"write {path!r}")
        elif event in ("exec", "compile") and not _importing():
            code = args[0] if event == "exec" else None
            where = getattr(code, "co_filename", None) if code is not None else (args[1] if len(args) > 1 else "?")
            if isinstance(where, str | bytes) and str(where).startswith("<"):
                self.events.append(f"{event} of {where!s:.40}")
        elif event.startswith(_SPAWN):
            self.events.append(f"{event} {str(args)[:80]}")
        elif event == "pickle.find_class":
            self.events.append(f"unpickling {args[0]}.{args[1]}")
        elif event.startswith(_FS_CHANGE) and not all(self._ok(a) for a in args[:2] if isinstance(a, str | bytes)):
            self.events.append(f"{event} {str(args)[:80]}")


def _importing() -> bool:
    """Inside the import system (a module body, its dataclasses and named tuples): not input-driven code."""
    try:
        frame = sys._getframe(2)
    except ValueError:  # an event raised from a shallow stack (a finalizer run by the collector)
        return False
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
