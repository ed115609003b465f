"""The guest's serial output on the terminal as it is produced (``viridian run`` / ``viridian boot``).

A :class:`LineWriter` is set as ``Serial16550.sink``: every byte the guest writes to THR reaches it -- one byte at
a time from the Python port bus, or the bytes of a whole run slice from the native console path (csrc vn_out
collects them and ``vcpu_io.collect`` hands them over when the slice ends) -- and each completed line is written
and flushed at once. A run that hangs or is killed therefore keeps every line the guest finished before the end
of the last slice. Bytes are decoded as UTF-8 with replacement characters, exactly as ``Serial16550.text()``.
"""

from __future__ import annotations

import codecs
from typing import TextIO


class LineWriter:
    """Serial bytes -> ``stream``, flushed at every newline; ``prefix`` starts each line (``[partition N] ``)."""

    def __init__(self, stream: TextIO, prefix: str = "") -> None:
        self.stream, self.prefix = stream, prefix
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._pending = ""  # the unfinished last line (prefixed writers only)
        self.broken = False  # the stream went away (a closed pipe): output stops, the run goes on

    def __call__(self, data: bytes) -> None:
        self._write(self._decode(data))

    def close(self) -> None:
        """End of the run: write what is left of an unfinished line (no newline is added)."""
        self._write(self._decode(b"", final=True))
        if self._pending:
            self._emit(self.prefix + self._pending)
            self._pending = ""

    def _write(self, text: str) -> None:
        if not text:
            return
        if not self.prefix:
            self._emit(text, flush="\n" in text)
            return
        text = self._pending + text
        cut = text.rfind("\n") + 1
        self._pending = text[cut:]
        if cut:
            self._emit("".join(self.prefix + line for line in text[:cut].splitlines(keepends=True)))

    def _emit(self, text: str, flush: bool = True) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text)
            if flush:
                self.stream.flush()
        except (BrokenPipeError, OSError, ValueError):  # closed pipe or stream: keep running, stop printing
            self.broken = True


__all__ = ["LineWriter"]
