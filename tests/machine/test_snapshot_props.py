"""Property test (issue 17): any mutation of a genuine snapshot -- a field replaced by any JSON value, or bytes
flipped, the checksum then made valid again -- either loads or is refused with a UserError; never another
exception, never a process started or a file opened for writing (watched in-process with an audit hook)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.machine.snapshot_craft import unpack
from viridian.errors import UserError
from viridian.machine import snapshot

SECTIONS = ("machine", "partition", "apics", "arch", "vcpus", "devices")
_WATCH: dict[str, Any] = {"on": False, "events": []}
_BAD = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen", "pickle.find_class",
        "ctypes.dlopen")  # (not "exec" nor "marshal.loads": a lazy import of a viridian module is both)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCH["on"]:
        return
    writing = event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+")
    if event.startswith(_BAD) or (writing and "__pycache__" not in str(args[0])):
        _WATCH["events"].append((event, repr(args)[:200]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def genuine(guests: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from viridian.cli.main import main

    path = tmp_path_factory.mktemp("props") / "g.snap"
    assert main(["run", str(guests / "win8.elf"), "--vcpus", "2", "--mem", "8", "--snapshot-at", "1500000",
                 "--snapshot", str(path), "--quiet"]) == 0
    return path.read_bytes()


def _leaves(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _leaves(v, (*prefix, k))] or [prefix]
    if isinstance(tree, list):
        return [p for i, v in enumerate(tree[:8]) for p in _leaves(v, (*prefix, i))] or [prefix]
    return [prefix]


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                    | st.floats(allow_nan=True) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=6)


def _try(blob: bytes, tmp: Path) -> None:
    path = tmp / "m.snap"
    path.write_bytes(blob)
    _WATCH["events"].clear()
    _WATCH["on"] = True
    try:
        snapshot.resume(str(path))
    except UserError as exc:
        assert "\n" not in str(exc)
    finally:
        _WATCH["on"] = False
    assert not _WATCH["events"], _WATCH["events"]


@settings(max_examples=40)
@given(data=st.data())
def test_field_mutations_load_or_are_refused(genuine: bytes, tmp_path_factory: pytest.TempPathFactory,
                                             data: st.DataObject) -> None:
    parts = unpack(genuine)
    where = data.draw(st.sampled_from(("manifest", *SECTIONS)))
    tree = parts.manifest if where == "manifest" else parts.state(where)
    path = data.draw(st.sampled_from(_leaves(tree)))
    tree = _replace(tree, path, data.draw(JSON))
    if where != "manifest":
        parts.set_state(where, tree)
    _try(parts.pack(), tmp_path_factory.mktemp("f"))


@settings(max_examples=30)
@given(data=st.data())
def test_byte_mutations_load_or_are_refused(genuine: bytes, tmp_path_factory: pytest.TempPathFactory,
                                            data: st.DataObject) -> None:
    parts = unpack(genuine)
    where = data.draw(st.sampled_from(("manifest", "ram", *SECTIONS)))
    if where == "manifest":
        raw = bytearray(json.dumps(parts.manifest).encode())
    else:
        raw = bytearray(parts.raw[where] if data.draw(st.booleans()) else parts.data(where))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if where == "manifest":
        try:
            parts.manifest = json.loads(raw)
        except ValueError:
            return
        if not isinstance(parts.manifest, dict) or not isinstance(parts.manifest.get("sections"), list):
            return
        blob = parts.pack(parts.manifest["sections"])
    else:
        parts.raw[where] = bytes(raw)  # compressed bytes flipped, or plain data in place of the stream
        blob = parts.pack()
    _try(blob, tmp_path_factory.mktemp("b"))
