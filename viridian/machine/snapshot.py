"""Snapshot / restore of a running partition (``viridian run --snapshot-at T --snapshot F``, ``viridian resume F``).

A snapshot is data only (no pickle, no engine bytes): the container is snapshot_format.py, the machine state
snapshot_state.py, a vCPU's registers snapshot_cpu.py. The manifest holds the run options (each type- and
range-checked here before a machine of that shape is built), the image's path and sha256 (the image must be
unchanged), the engine that took it (informative: the state is architectural, any build can load it), and the
virtual time asked for and actually reached.

The time: ``--snapshot-at T`` ends the scheduler's quantum at T (Host clips it), so every vCPU stops at the
first translation-block boundary at or after T (virtual time advances per block, so that is the first
instruction boundary where its clock has reached T). A vCPU that stopped right after an STI, whose interrupt
shadow the register API cannot carry, runs on to its next block first (:func:`prepare`). The actual time,
the partition clock then, is recorded and printed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from functools import cache
from typing import TYPE_CHECKING, Any

from viridian.machine import layout as L
from viridian.machine.snapshot_format import VERSION, SnapshotError, SnapshotFile, write
from viridian.machine.snapshot_state import load_sections, save_sections
from viridian.state import Fields, StateError

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

MAX_IMAGE = 1 << 30  # bytes of an image (or libvirt XML) hashed or read on resume
MAX_SHADOW_STEPS = 8
BOARDS = ("minimal", "pc")  # Machine(board=...): the platform devices a snapshot's machine is built with


def _str_or_none(f: Fields, key: str) -> str | None:
    return None if f.d.get(key) is None else f.text(key)


def check_options(raw: Any) -> dict[str, Any]:
    """The run options a snapshot carries, each typed and within the machine's limits (the same limits the
    command line has): a snapshot cannot ask for a machine ``viridian run`` would refuse."""
    f = Fields(raw, "options")
    cpuid = f.seq("cpuid", max_len=64)
    if any(type(e) is not str or len(e) > 256 for e in cpuid):
        raise StateError("options.cpuid: expected CPUID edits (strings)")
    pcpus = f.opt_uint("pcpus", 1, L.MAX_VCPUS)
    return {"image": f.text("image"), "hv": _str_or_none(f, "hv"), "xen": _str_or_none(f, "xen"),
            "libvirt": _str_or_none(f, "libvirt"), "preset": _str_or_none(f, "preset"), "cpuid": list(cpuid),
            "vcpus": f.uint("vcpus", 1, L.MAX_VCPUS), "mem": f.uint("mem", 2, L.MAX_RAM >> 20),
            "max_ticks": f.uint("max_ticks", 1, (1 << 62)), "quantum": f.uint("quantum", 1, 1 << 40),
            "pcpus": pcpus, "ple_window": f.uint("ple_window", 0, 1 << 32), "ple_gap": f.uint("ple_gap", 0, 1 << 32),
            "ap_start": f.text("ap_start", ("entry", "sipi")), "fast": f.flag("fast"),
            "cmdline": f.text("cmdline", max_len=L.CMDLINE_MAX)}


OPTION_KEYS = ("image", "hv", "xen", "libvirt", "preset", "cpuid", "vcpus", "mem", "max_ticks", "quantum", "pcpus",
               "ple_window", "ple_gap", "ap_start", "fast", "cmdline")


@cache
def engine_identity() -> dict[str, str]:
    """The Unicorn release and libunicorn's sha256 (the engine's build module, engines.py); a note on resume if
    they differ."""
    from viridian.machine import engines

    ident = engines.identity()
    return {"unicorn": str(ident["unicorn"]), "libunicorn_sha256": str(ident["libunicorn_sha256"])}


def file_sha256(path: str, what: str) -> str:
    """sha256 of a regular file of at most MAX_IMAGE bytes (a FIFO or a device is refused, never read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SnapshotError(f"the snapshot's {what} {path} cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_IMAGE:
            raise SnapshotError(f"the snapshot's {what} {path} is not a regular file of at most {MAX_IMAGE} bytes")
        return hashlib.file_digest(fh, "sha256").hexdigest()


# -- taking a snapshot --------------------------------------------------------------------------------------
def prepare(m: Machine) -> None:
    """Make the stopping point one the file can describe: a vCPU inside an STI interrupt shadow (SDM vol. 3
    §6.8.3) runs on to its next block boundary. Raises SnapshotError if the guest ends meanwhile."""
    m.result = None
    end = m.T
    for v in m.vcpus:
        used = 0
        for _ in range(MAX_SHADOW_STEPS):
            if v.halted or v.idle or v.wait_sipi or v.sipi_vector is not None or not v.in_sti_shadow():
                break
            used += m.run_vcpu(v, m.T, used, 1)
            if m.done:
                raise SnapshotError("the guest ended while leaving an interrupt shadow: no snapshot written")
        end = max(end, m.T + used)
    m.end_quantum(end)


def save(m: Machine, path: str, options: dict[str, Any], requested: int | None = None) -> int:
    """Write a snapshot of ``m`` (stopped by the Host at ``requested``, see :func:`prepare`) to ``path``;
    returns the virtual time it was taken at."""
    opts = check_options({k: options.get(k) for k in OPTION_KEYS})
    manifest = {"format": "viridian-snapshot", "version": VERSION, "options": opts,
                "image": {"path": m.image.path, "sha256": file_sha256(m.image.path, "image")},
                "engine": engine_identity(), "ram_size": m.ram_size, "vcpus": m.vcpu_count,
                "board": getattr(m, "board", "minimal"),
                "time": {"requested": requested, "tsc": m.clock.tsc(), "reference_time_100ns": m.clock.ref_time()}}
    try:
        sections = save_sections(m)
    except StateError as exc:
        raise SnapshotError(f"cannot snapshot this machine: {exc}") from None
    write(path, manifest, sections)
    return m.clock.tsc()


# -- loading one -----------------------------------------------------------------------------------------------
def open_snapshot(path: str) -> SnapshotFile:
    """Open and verify ``path`` (container, checksum, manifest schema); close it when done."""
    snap = SnapshotFile(path)
    try:
        snap.manifest = check_manifest(snap.manifest)
    except StateError as exc:
        snap.close()
        raise SnapshotError(f"{path}: {exc}") from None
    except BaseException:
        snap.close()
        raise
    return snap


def check_manifest(raw: dict[str, Any]) -> dict[str, Any]:
    f = Fields(raw, "manifest")
    if f.text("format") != "viridian-snapshot" or f.uint("version", 0, 1 << 16) != VERSION:
        raise StateError(f"manifest: not a version {VERSION} viridian snapshot")
    opts = check_options(f.d.get("options"))
    image, time, engine = f.sub("image"), f.sub("time"), f.sub("engine")
    sha = image.text("sha256", max_len=64)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise StateError("manifest.image.sha256: expected 64 hex digits")
    out = {"options": opts, "image": {"path": image.text("path"), "sha256": sha},
           "engine": {"unicorn": engine.text("unicorn", max_len=64),
                      "libunicorn_sha256": engine.text("libunicorn_sha256", max_len=64)},
           "ram_size": f.uint("ram_size", 1, L.MAX_RAM), "vcpus": f.uint("vcpus", 1, L.MAX_VCPUS),
           "board": f.text("board", BOARDS),
           "time": {"requested": time.opt_uint("requested", 1, 1 << 62), "tsc": time.uint("tsc", 0, (1 << 63) - 1)}}
    if out["ram_size"] != opts["mem"] << 20 or out["vcpus"] != opts["vcpus"]:
        raise StateError("manifest: RAM size or vCPU count disagree with the options")
    return out


def engine_note(manifest: dict[str, Any]) -> str | None:
    """One line when the snapshot was taken on another engine build (it still loads: the state is data)."""
    now, then = engine_identity(), manifest["engine"]
    if now == then:
        return None
    return (f"viridian: note: snapshot taken with unicorn {then['unicorn']} (libunicorn "
            f"{then['libunicorn_sha256'][:12]}), resuming on {now['unicorn']} ({now['libunicorn_sha256'][:12]})")


def build_machine(manifest: dict[str, Any]) -> Machine:
    """A fresh machine of the snapshot's shape: the image must be the one it was taken with."""
    from viridian.config.cpuid_edits import parse_edit
    from viridian.config.presets import load_config
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine

    o, path = manifest["options"], manifest["image"]["path"]
    if file_sha256(path, "image") != manifest["image"]["sha256"]:
        raise SnapshotError(f"the image {path} changed since the snapshot (sha256 differs)")
    if o["libvirt"]:
        file_sha256(o["libvirt"], "libvirt XML")  # a regular file of bounded size before it is parsed
    given = any(o.get(k) for k in ("hv", "xen", "libvirt", "preset"))
    config = load_config(hv=o["hv"], xen=o["xen"], libvirt_path=o["libvirt"],
                         preset=o["preset"] if given else "recommended")
    if o["cpuid"]:
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in o["cpuid"]))
    board = {"board": manifest["board"]} if manifest["board"] != "minimal" else {}
    return Machine(config, load_image(path), vcpus=o["vcpus"], mem_mib=o["mem"], max_ticks=o["max_ticks"],
                   quantum=o["quantum"], ple_gap=o["ple_gap"], ple_window=o["ple_window"], fast=o["fast"],
                   ap_start=o["ap_start"], cmdline=o["cmdline"], **board)


def load_into(m: Machine, snap: SnapshotFile) -> int:
    """Restore ``m`` (built by :func:`build_machine`, or the same way) from ``snap``; returns the Host's
    round-robin position to continue with."""
    if m.ram_size != snap.manifest["ram_size"] or m.vcpu_count != snap.manifest["vcpus"]:
        raise SnapshotError(f"{snap.path}: the snapshot's RAM size or vCPU count differ from this machine's")
    rr = load_sections(m, snap)
    if m.fast:
        m._skipped = m.clock.tsc()  # wall-clock mode continues from the snapshot's time
    return rr


def resume(path: str) -> tuple[Machine, int, dict[str, Any]]:
    """Everything ``viridian resume`` needs: the restored machine, the round-robin position, the manifest."""
    with open_snapshot(path) as snap:
        m = build_machine(snap.manifest)
        rr = load_into(m, snap)
        return m, rr, snap.manifest

