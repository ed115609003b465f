"""Host inputs and outputs checked in one place (issue 17 item 3): every file viridian reads is a regular file of
bounded size, read with a bounded read; every file it writes is checked before a guest runs; every JSON input
has a size and a nesting-depth limit; arguments that are not valid UTF-8 are refused. Each check fails with a
UserError (one line, exit status 2).

The snapshot loader should call ``read_input(path, "snapshot", SNAPSHOT_MAX)`` (or ``open_input`` for a
streamed read) and ``load_json`` for its manifest.
"""

from __future__ import annotations

import json
import os
import stat
from typing import IO, Any

from viridian.errors import UserError

MiB = 1 << 20
IMAGE_MAX = 1024 * MiB  # guest images, kernels, initrds: RAM is at most 3 GiB and images lie inside it
RECORD_MAX = 64 * MiB  # replay records (a long --fast run logs a few million clock readings)
CONFIG_MAX = 1 * MiB  # libvirt domain XML
SNAPSHOT_MAX = 3200 * MiB  # a snapshot holds at most the 3 GiB of RAM plus its manifest
JSON_DEPTH = 32  # nesting of any JSON input (records are 3 deep)
_NO_WRITE_ROOTS = ("/proc", "/sys")  # kernel interfaces: never an output


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def open_input(path: str | os.PathLike[str], what: str, cap: int) -> tuple[IO[bytes], int]:
    """Open an input file for reading: (binary file, size). It must be a regular file of at most ``cap`` bytes;
    a FIFO, device, socket or directory is refused without being opened (opening some devices has effects)."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except (OSError, ValueError) as exc:
        reason = _reason(exc) if isinstance(exc, OSError) else "the path contains a NUL character"
        raise UserError(f"cannot read {what} {name}: {reason}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"cannot read {what} {name}: it is {_kind(st.st_mode)}, not a regular file")
    try:  # O_NONBLOCK: should the path have become a FIFO since the stat, the open does not wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"cannot read {what} {name}: {_reason(exc)}") from None
    fh = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        fh.close()
        raise UserError(f"cannot read {what} {name}: it is {_kind(st.st_mode)}, not a regular file")
    if st.st_size > cap:
        fh.close()
        raise UserError(f"{what} {name} is too large ({st.st_size:,} bytes; at most {cap:,})")
    return fh, st.st_size


def read_input(path: str | os.PathLike[str], what: str, cap: int) -> bytes:
    """The bytes of an input file (see open_input); the read itself is bounded to ``cap`` + 1 bytes, so a file
    that grows while it is read is refused too."""
    fh, size = open_input(path, what, cap)
    parts, total = [], 0
    with fh:
        try:
            while total <= cap:  # at most cap + 1 bytes, in pieces no larger than the file claims to be
                chunk = fh.read(min(cap + 1 - total, max(size + 1 - total, 1 << 16)))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise UserError(f"cannot read {what} {os.fspath(path)}: {_reason(exc)}") from None
    if total > cap:
        raise UserError(f"{what} {os.fspath(path)} is too large (more than {cap:,} bytes)")
    return b"".join(parts)


def sha256_input(path: str | os.PathLike[str], what: str, cap: int = IMAGE_MAX) -> str:
    """The sha256 of an input file, read in chunks (bounded like read_input)."""
    import hashlib

    fh, _size = open_input(path, what, cap)
    h, total = hashlib.sha256(), 0
    with fh:
        while chunk := fh.read(1 << 20):
            total += len(chunk)
            if total > cap:
                raise UserError(f"{what} {os.fspath(path)} is too large (more than {cap:,} bytes)")
            h.update(chunk)
    return h.hexdigest()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes, what: str, *, max_depth: int = JSON_DEPTH) -> Any:
    """Parse JSON bytes (UTF-8, no NaN/Infinity) nested at most ``max_depth`` deep; UserError otherwise."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except RecursionError:
        raise UserError(f"{what}: JSON nested too deeply (at most {max_depth} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: a deep document cannot exhaust the Python stack here
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise UserError(f"{what}: JSON nested too deeply (at most {max_depth} levels)")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def check_text(value: str, what: str) -> str:
    """Text that reaches the guest or a file must be valid UTF-8 (not bytes smuggled in by surrogateescape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "backslashreplace").decode()
        raise UserError(f"{what} {shown!r} is not valid UTF-8".strip()) from None
    return value


def check_output(path: str, what: str, *, dash: bool = True) -> str:
    """An output file the command will write: '-' (when allowed), an existing writable regular file (or a
    character device such as /dev/null), or a new file in an existing, writable directory; never a directory,
    a FIFO (it would block without a reader), a socket, or anything under /proc or /sys. Checked before any
    guest runs."""
    if path == "-":
        if dash:
            return path
        raise UserError(f"{what} -: give a file name ('-' is not allowed here)")
    if not path:
        raise UserError(f"{what}: empty file name")
    check_text(path, what)
    full = os.path.abspath(path)
    if _under_kernel_fs(os.path.realpath(os.path.dirname(full))):
        raise UserError(f"{what} {path}: will not write into /proc or /sys")
    try:
        st = os.stat(full)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UserError(f"{what} {path}: {_reason(exc)}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {path} is a directory (give a file name)")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):  # a FIFO without a reader blocks forever
            raise UserError(f"{what} {path} is {_kind(st.st_mode)}")
        if not os.access(full, os.W_OK):
            raise UserError(f"{what} {path} is not writable (permission denied)")
        return path
    _check_parent(os.path.dirname(full), path, what)
    return path


def check_output_dir(path: str, what: str) -> str:
    """An output directory: an existing writable directory, or one that can be created (its nearest existing
    ancestor is a writable directory)."""
    if not path:
        raise UserError(f"{what}: empty directory name")
    check_text(path, what)
    full = os.path.abspath(path)
    if _under_kernel_fs(os.path.realpath(full)):
        raise UserError(f"{what} {path}: will not write into /proc or /sys")
    probe = full
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot create files in {probe} (permission denied)")
    return path


def _check_parent(parent: str, path: str, what: str) -> None:
    if not os.path.exists(parent):
        raise UserError(f"{what} {path}: directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot create files in {parent} (permission denied)")


def _under_kernel_fs(real: str) -> bool:
    return any(real == root or real.startswith(root + "/") for root in _NO_WRITE_ROOTS)
