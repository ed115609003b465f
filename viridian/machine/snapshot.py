"""Snapshot / restore of a running partition (``viridian run --snapshot-at N --snapshot F``, ``viridian resume F``).

File format (version 1): ``VIRIDIAN-SNAPSHOT 1\\n``, an 8-byte length and a JSON header (machine options, image
path and sha256, the payload's sha256 and size), then the zlib-compressed payload. The payload is a pickle of
the machine's state taken between scheduling quanta (every vCPU at an instruction boundary): guest RAM, every
vCPU's Unicorn context and clock, the local APICs, the whole Hyper-V model (partition, VPs, SynIC, timers,
pages, guest OS ID), the virtual clock, the port devices and the exit counters. References to the machine
itself (the partition's MachineServices, the APIC bus callbacks, guest memory) are written as names and bound
to the new machine on load. Loading checks magic, version, sizes and the checksum before anything is built, and
unpickles only classes of viridian, msr and the standard containers: a corrupt, truncated or foreign file is
refused with one clear message, never half-loaded.

Engine translations, MSR-site hooks and scanned-page tables are not saved: the resumed vCPUs rediscover them.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import pickle
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viridian.errors import UserError

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

MAGIC = b"VIRIDIAN-SNAPSHOT 1\n"
VERSION = 1
_ALLOWED_MODULES = ("viridian.", "msr.", "collections", "builtins", "enum", "dataclasses", "functools")
_VCPU_FIELDS = ("halted", "idle", "wait_sipi", "sipi_vector", "nmi_pending", "ticks_used", "stats", "_efer")
_NATIVE_FIELDS = ("bytes", "pauses", "pause_last", "pause_loop_start", "blocks")


class _Pickler(pickle.Pickler):
    def __init__(self, fh: Any, m: Machine) -> None:
        super().__init__(fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.m = m

    def persistent_id(self, obj: Any) -> str | None:
        if obj is self.m:
            return "machine"
        if obj is self.m.memory:
            return "memory"
        if obj is self.m.ram or obj is self.m.ram_buffer:
            return "ram"
        if obj is self.m.partition.msr_table:  # static registries (declarative handler tables)
            return "msr_table"
        if obj is self.m.partition.call_table:
            return "call_table"
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: Any, m: Machine) -> None:
        super().__init__(fh)
        self.m = m

    def persistent_load(self, pid: Any) -> Any:
        table = {"machine": self.m, "memory": self.m.memory, "ram": self.m.ram,
                 "msr_table": self.m.partition.msr_table, "call_table": self.m.partition.call_table}
        if pid not in table:
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        return table[pid]

    def find_class(self, module: str, name: str) -> Any:
        if not module.startswith(_ALLOWED_MODULES) and module not in ("collections", "builtins"):
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a viridian snapshot")
        return super().find_class(module, name)


def _state(m: Machine) -> dict[str, Any]:
    from viridian.machine.engine import context_bytes

    return {
        "ram": zlib.compress(bytes(m.ram), 1),
        "model": (m.partition, m.apics, m.bus, m.clock, m.arch, m.ports, m.neg),
        "machine": {"T": m.T, "flushes": m.flushes},
        "vcpus": [{"context": bytes(context_bytes(v.uc)[1]),
                   "fields": {k: getattr(v, k) for k in _VCPU_FIELDS},
                   "native": {k: int(getattr(v._native, k)) for k in _NATIVE_FIELDS}} for v in m.vcpus],
    }


def save(m: Machine, path: str, options: dict[str, Any]) -> None:
    """Write a snapshot of ``m`` (stopped between quanta) to ``path``."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, m).dump(_state(m))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # a host bug, said plainly
        raise UserError(f"cannot snapshot this machine: {exc}") from None
    payload = zlib.compress(buf.getvalue(), 6)
    header = {"version": VERSION, "options": options, "image": {"path": m.image.path,
              "sha256": hashlib.sha256(Path(m.image.path).read_bytes()).hexdigest()},
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "payload_size": len(payload),
              "tsc": m.clock.tsc(), "reference_time_100ns": m.clock.ref_time()}
    head = json.dumps(header).encode()
    try:
        Path(path).write_bytes(MAGIC + struct.pack("<Q", len(head)) + head + payload)
    except OSError as exc:
        raise UserError(f"cannot write the snapshot {path}: {exc.strerror}") from None


def read_header(path: str) -> tuple[dict[str, Any], bytes]:
    """Validate the file and return (header, payload); UserError for anything that is not a whole snapshot."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the snapshot {path}: {exc.strerror}") from None
    if not blob.startswith(MAGIC):
        raise UserError(f"{path} is not a viridian snapshot (or not version {VERSION})")
    off = len(MAGIC)
    if len(blob) < off + 8:
        raise UserError(f"{path}: snapshot truncated (header)")
    (n,) = struct.unpack_from("<Q", blob, off)
    try:
        header = json.loads(blob[off + 8 : off + 8 + n])
    except ValueError:
        raise UserError(f"{path}: snapshot header is corrupt") from None
    payload = blob[off + 8 + n :]
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise UserError(f"{path}: snapshot version {header.get('version') if isinstance(header, dict) else '?'} "
                        f"(this viridian reads {VERSION})")
    if len(payload) != header.get("payload_size"):
        raise UserError(f"{path}: snapshot truncated ({len(payload)} of {header.get('payload_size')} bytes)")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise UserError(f"{path}: snapshot is corrupt (checksum mismatch)")
    return header, payload


def restore(m: Machine, payload: bytes) -> None:
    """Load a validated payload into a freshly built machine with the same options."""
    from msr.registry import Bound, MsrChain

    try:
        state = _Unpickler(io.BytesIO(zlib.decompress(payload)), m).load()
    except (pickle.UnpicklingError, zlib.error, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        raise UserError(f"snapshot payload cannot be loaded: {exc}") from None
    ram = zlib.decompress(state["ram"])
    if len(ram) != m.ram_size or len(state["vcpus"]) != m.vcpu_count:
        raise UserError("snapshot does not match the machine (RAM size or vCPU count)")
    m.ram[:] = ram
    m.partition, m.apics, m.bus, m.clock, m.arch, m.ports, m.neg = state["model"]
    m.T, m.flushes = state["machine"]["T"], state["machine"]["flushes"]
    from msr.arch import ARCH_MSRS
    from msr.x2apic import X2APIC_MSRS

    m.chains = [MsrChain([Bound(X2APIC_MSRS, vp), Bound(m.partition.msr_table, vp), Bound(ARCH_MSRS, m.arch[vp.index])])
                for vp in m.partition.vps]
    pages = {o.gpa for o in m.partition.overlays() if not o.writable}
    for v, saved in zip(m.vcpus, state["vcpus"], strict=True):
        ctx = v.uc.context_save()
        if len(saved["context"]) != ctx.size:
            raise UserError("snapshot was taken with another engine build (CPU context size differs)")
        ctypes.memmove(ctx.context, saved["context"], ctx.size)
        v.uc.context_restore(ctx)
        v.uc.ctl_flush_tb()
        for k, val in saved["fields"].items():
            setattr(v, k, val)
        for k, val in saved["native"].items():
            setattr(v._native, k, val)
        v.vp, v.apic = m.partition.vps[v.index], m.apics[v.index]
        v.multiboot_entry = None
        v.set_protected(pages)
    m._update_fast_paths()
