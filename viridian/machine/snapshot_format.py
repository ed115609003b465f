"""The snapshot container (version 2): plain data in checked, bounded sections; nothing in it is executable.

Layout::

    b"VIRIDIAN-SNAPSHOT 2\\n"            magic and format version
    u32 little-endian N                   manifest length, 2 .. MAX_MANIFEST
    N bytes                               the manifest: a JSON object (UTF-8)
    section 0, section 1, ...             each a zlib stream of the length the manifest lists, in order
    32 bytes                              sha256 of everything above (magic, manifest and sections)

The manifest's ``sections`` is a list of ``{"name", "length", "size"}``: compressed and uncompressed bytes.
Reading checks, before anything is decompressed or built: a regular file of bounded size, the magic (the
pickle-based version 1 is refused by name), the checksum over the whole file, the manifest's length, JSON and
section table, and that the sections exactly fill the file. A section is decompressed as a stream whose
output may not exceed its declared size (which the caller bounds first: the RAM size of the machine, or
MAX_JSON for a state section), so a decompression bomb stops at the cap. Any failure is a
:class:`SnapshotError`: one line, exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from viridian.errors import UserError

MAGIC = b"VIRIDIAN-SNAPSHOT 2\n"
OLD_MAGIC = b"VIRIDIAN-SNAPSHOT 1\n"
VERSION = 2
MAX_MANIFEST = 1 << 20
MAX_JSON = 16 << 20  # uncompressed bytes of one state section (the largest, the 4 MiB serial log, is 8 MiB of hex)
MAX_TOKENS = 1 << 21  # commas and brackets in one: bounds the Python objects a section can become
MAX_FILE = (4 << 30) + (256 << 20)  # 3 GiB of RAM compresses to less than this even when incompressible
MAX_SECTIONS = 16
CHUNK = 1 << 20
DIGEST = 32


class SnapshotError(UserError):
    """A snapshot that cannot be used: said in one line."""


@dataclass(frozen=True)
class Section:
    name: str
    offset: int  # in the file
    length: int  # compressed bytes
    size: int  # uncompressed bytes


def write(path: str, manifest: dict[str, Any], sections: list[tuple[str, Any]]) -> None:
    """Write ``manifest`` plus ``sections`` (name, bytes-like) to ``path`` atomically (a temporary file in the
    same directory, renamed over it once complete)."""
    packed: list[tuple[str, bytes, int]] = []
    for name, data in sections:
        view = memoryview(data).cast("B")
        comp = zlib.compressobj(1)
        parts = [comp.compress(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)]
        parts.append(comp.flush())
        packed.append((name, b"".join(parts), len(view)))
    head = dict(manifest, sections=[{"name": n, "length": len(b), "size": s} for n, b, s in packed])
    blob = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for part in (MAGIC, struct.pack("<I", len(blob)), blob, *(b for _n, b, _s in packed)):
                digest.update(part)
                fh.write(part)
            fh.write(digest.digest())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotError(f"cannot write the snapshot {path}: {exc.strerror or exc}") from None


class SnapshotFile:
    """An opened, checksum-verified snapshot: ``manifest`` and its sections, read on demand."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise SnapshotError(f"cannot read the snapshot {path}: {exc.strerror or exc}") from None
        self._fh: BinaryIO = os.fdopen(fd, "rb")
        try:
            self._open()
        except BaseException:
            self._fh.close()
            raise

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _fail(self, why: str) -> SnapshotError:
        return SnapshotError(f"{self.path}: {why}")

    def _open(self) -> None:
        st = os.fstat(self._fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise self._fail("not a regular file")
        size = st.st_size
        if size > MAX_FILE:
            raise self._fail(f"{size} bytes is larger than any snapshot ({MAX_FILE})")
        head = self._read_at(0, min(size, len(MAGIC)))
        if head == OLD_MAGIC:
            raise self._fail("a version 1 snapshot (pickle-based, which could run code): this viridian reads "
                             "only version 2 data snapshots; take the snapshot again")
        if head != MAGIC:
            raise self._fail("not a viridian snapshot")
        if size < len(MAGIC) + 4 + DIGEST:
            raise self._fail("truncated (no manifest)")
        digest = hashlib.sha256()
        for chunk in self._chunks(0, size - DIGEST):
            digest.update(chunk)
        if digest.digest() != self._read_at(size - DIGEST, DIGEST):
            raise self._fail("corrupt or truncated (checksum mismatch)")
        (n,) = struct.unpack("<I", self._read_at(len(MAGIC), 4))
        if not 2 <= n <= min(MAX_MANIFEST, size - len(MAGIC) - 4 - DIGEST):
            raise self._fail(f"manifest length {n} out of range")
        try:
            manifest = json.loads(self._read_at(len(MAGIC) + 4, n).decode("utf-8"))
        except (ValueError, RecursionError):
            raise self._fail("the manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise self._fail("the manifest is not a JSON object")
        self.manifest: dict[str, Any] = manifest
        self.sections = self._section_table(manifest.get("sections"), len(MAGIC) + 4 + n, size - DIGEST)

    def _section_table(self, table: Any, start: int, end: int) -> dict[str, Section]:
        if type(table) is not list or not 1 <= len(table) <= MAX_SECTIONS:
            raise self._fail(f"the section table must list 1..{MAX_SECTIONS} sections")
        out: dict[str, Section] = {}
        at = start
        for i, item in enumerate(table):
            if not isinstance(item, dict) or set(item) != {"name", "length", "size"}:
                raise self._fail(f"section {i}: expected name, length and size")
            name, length, usize = item["name"], item["length"], item["size"]
            if type(name) is not str or not name.isidentifier() or len(name) > 32 or name in out:
                raise self._fail(f"section {i}: bad or repeated name")
            if type(length) is not int or type(usize) is not int or not 0 < length <= end - at or usize < 0:
                raise self._fail(f"section {name}: length {length!r} / size {usize!r} out of range")
            out[name] = Section(name, at, length, usize)
            at += length
        if at != end:
            raise self._fail(f"the sections end at byte {at}, the data at {end}")
        return out

    # -- reading -------------------------------------------------------------------------------------------
    def _read_at(self, offset: int, n: int) -> bytes:
        self._fh.seek(offset)
        data = self._fh.read(n)
        if len(data) != n:
            raise self._fail("truncated while reading")
        return data

    def _chunks(self, offset: int, n: int) -> Iterator[bytes]:
        self._fh.seek(offset)
        while n > 0:
            data = self._fh.read(min(CHUNK, n))
            if not data:
                raise self._fail("truncated while reading")
            n -= len(data)
            yield data

    def section(self, name: str) -> Section:
        if name not in self.sections:
            raise self._fail(f"no {name} section")
        return self.sections[name]

    def inflate_into(self, name: str, dest: memoryview) -> None:
        """Decompress section ``name`` straight into ``dest``; its declared size must be exactly len(dest),
        and the stream may produce no byte more (checked as it goes)."""
        sec = self.section(name)
        if sec.size != len(dest):
            raise self._fail(f"section {name} holds {sec.size} bytes, the machine has {len(dest)}")
        d = zlib.decompressobj()
        pos = 0
        try:
            for chunk in self._chunks(sec.offset, sec.length):
                data = chunk
                while data:
                    out = d.decompress(data, CHUNK)
                    if pos + len(out) > sec.size:
                        raise self._fail(f"section {name} inflates beyond its declared {sec.size} bytes")
                    dest[pos : pos + len(out)] = out
                    pos += len(out)
                    data = d.unconsumed_tail
                    if d.eof:
                        break
            if not d.eof or d.unused_data or d.unconsumed_tail:
                raise self._fail(f"section {name}: the zlib stream does not end where the section does")
        except zlib.error as exc:
            raise self._fail(f"section {name} is not a zlib stream ({exc})") from None
        if pos != sec.size:
            raise self._fail(f"section {name} holds {pos} bytes, {sec.size} declared")

    def json_section(self, name: str) -> Any:
        """Section ``name`` as JSON (at most MAX_JSON bytes inflated)."""
        sec = self.section(name)
        if sec.size > MAX_JSON:
            raise self._fail(f"section {name}: {sec.size} bytes is more than a state section holds")
        buf = bytearray(sec.size)
        self.inflate_into(name, memoryview(buf))
        if buf.count(b",") + buf.count(b"[") + buf.count(b"{") > MAX_TOKENS:
            raise self._fail(f"section {name}: more items than any machine state has")
        try:
            return json.loads(buf.decode("utf-8"))
        except (ValueError, RecursionError):
            raise self._fail(f"section {name} is not JSON") from None
