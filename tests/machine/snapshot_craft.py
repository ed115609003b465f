"""Taking snapshot files apart and putting them back together with a valid checksum (for hostile-file tests)."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from viridian.machine.snapshot_format import DIGEST, MAGIC


@dataclass
class Parts:
    manifest: dict[str, Any]
    raw: dict[str, bytes] = field(default_factory=dict)  # section name -> compressed bytes, in file order

    def data(self, name: str) -> bytes:
        return zlib.decompress(self.raw[name])

    def state(self, name: str) -> Any:
        return json.loads(self.data(name))

    def set_state(self, name: str, value: Any) -> None:
        self.set_data(name, json.dumps(value).encode())

    def set_data(self, name: str, data: bytes, size: int | None = None) -> None:
        self.raw[name] = zlib.compress(data, 1)
        self._sizes[name] = len(data) if size is None else size

    def __post_init__(self) -> None:
        self._sizes = {s["name"]: s["size"] for s in self.manifest["sections"]}

    def pack(self, table: list[dict[str, Any]] | None = None) -> bytes:
        """Magic, manifest (its section table rebuilt unless ``table`` is given), sections, sha256."""
        man = dict(self.manifest)
        man["sections"] = table if table is not None else [
            {"name": n, "length": len(b), "size": self._sizes[n]} for n, b in self.raw.items()]
        head = json.dumps(man).encode()
        body = MAGIC + struct.pack("<I", len(head)) + head + b"".join(self.raw.values())
        return body + hashlib.sha256(body).digest()


def unpack(blob: bytes) -> Parts:
    assert blob.startswith(MAGIC)
    (n,) = struct.unpack_from("<I", blob, len(MAGIC))
    at = len(MAGIC) + 4
    manifest = json.loads(blob[at : at + n])
    at += n
    parts = Parts(manifest)
    for s in manifest["sections"]:
        parts.raw[s["name"]] = blob[at : at + s["length"]]
        at += s["length"]
    assert at == len(blob) - DIGEST
    return parts


def boundaries(blob: bytes) -> list[int]:
    """Every offset where a part of the file starts: magic, length, manifest, each section, the checksum."""
    (n,) = struct.unpack_from("<I", blob, len(MAGIC))
    at = len(MAGIC) + 4 + n
    out = [0, len(MAGIC) // 2, len(MAGIC), len(MAGIC) + 4, at]
    for s in json.loads(blob[len(MAGIC) + 4 : at])["sections"]:
        at += s["length"]
        out.append(at)
    return [*out, len(blob) - 1]
