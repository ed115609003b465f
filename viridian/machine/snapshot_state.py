"""A machine's state as sections of plain data, and loading them into a freshly built machine of the same shape.

Sections (snapshot_format.py holds them): ``ram`` (raw guest RAM), ``machine`` (scheduler time, clock, port
bus counters, negotiation log), ``partition`` (the Hyper-V model: partition-wide MSRs, reference time, every
VP's SynIC, timers, queues and APIC assist), ``apics`` (the APIC bus and every local APIC), ``arch``
(architectural MSRs), ``vcpus`` (each vCPU's registers -- snapshot_cpu.py -- its run state, clock and exit
counters) and ``devices``.

Device protocol (for every platform device: PIT, PIC, I/O APIC, HPET, PM timer, fw_cfg, ...): a device is
saved when it is on the port bus (named ``<class name in lower case>@<its first port>``, e.g.
``serial16550@0x3f8``) or registered in ``machine.devices[name]`` (MMIO devices), and it has both
``save_state() -> dict`` (JSON data: ints, bools, strs, lists, dicts; bytes as hex) and
``load_state(state: dict) -> None``, which checks every field (type and range) and raises ``ValueError``
(``viridian.state.Fields`` does it in one line per field). A device of the machine missing from the file, or a
saved device the machine does not have, refuses the snapshot. ``load_state`` runs after RAM, clock and APICs
are restored, so a device may re-derive deadlines from the clock.

Loading never builds objects from names in the file: the machine is built from the checked options, then each
object's ``load_state`` takes its own fields. Engine translations, MSR-site hooks and code-page tables are not
saved: the resumed vCPUs rediscover them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from viridian.machine.backend import CLOCK_FIELDS
from viridian.machine.snapshot_format import SnapshotError, SnapshotFile
from viridian.state import Fields, StateError

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend as Vcpu
    from viridian.machine.machine import Machine

STATE_SECTIONS = ("machine", "partition", "apics", "arch", "vcpus", "devices")
MAX_TIME = (1 << 63) - 1


def stateful_devices(m: Machine) -> dict[str, Any]:
    """Every device that follows the protocol, by name: port-bus devices, ``machine.devices``, and the PC
    platform (``--machine pc``) as one device ``platform`` holding the devices it registered itself."""
    found: dict[str, Any] = {**m.ports.devices(), **m.devices}
    platform = getattr(m, "platform", None)
    if platform is not None:
        own = {id(d) for d in getattr(platform, "_state", {}).values()}
        found = {name: dev for name, dev in found.items() if id(dev) not in own}
        found["platform"] = platform
    for name, dev in found.items():
        if not (callable(getattr(dev, "save_state", None)) and callable(getattr(dev, "load_state", None))):
            raise StateError(f"device {name} has no save_state/load_state: this machine cannot be snapshotted")
    return found


def save_sections(m: Machine) -> list[tuple[str, Any]]:
    """The machine's state: RAM and one JSON-able value per state section."""
    host = m.host
    return [("ram", m.ram), *[(name, json.dumps(value, separators=(",", ":")).encode()) for name, value in (
        ("machine", {"T": m.T, "flushes": m.flushes, "rr": host.rr if host is not None else 0,
                     "clock": m.clock.save_state(), "ports": m.ports.save_state(),
                     "negotiation": m.neg.save_state()}),
        ("partition", m.partition.save_state()),
        ("apics", m.bus.save_state()),
        ("arch", [a.save_state() for a in m.arch]),
        ("vcpus", [_save_vcpu(v) for v in m.vcpus]),
        ("devices", {name: dev.save_state() for name, dev in stateful_devices(m).items()}),
    )]]


def _save_vcpu(v: Vcpu) -> dict[str, Any]:
    return {"cpu": v.save_cpu(), "halted": v.halted, "idle": v.idle, "wait_sipi": v.wait_sipi,
            "sipi_vector": v.sipi_vector, "nmi_pending": v.nmi_pending, "ticks_used": v.ticks_used,
            "multiboot_entry": list(v.multiboot_entry) if v.multiboot_entry is not None else None,
            "native": v.clock_state(), "stats": v.stats.save_state()}


def load_sections(m: Machine, snap: SnapshotFile) -> int:
    """Restore a freshly built ``m`` from ``snap`` (RAM first, then every object); returns the saved
    round-robin position for the Host. A wrong field is a SnapshotError naming it."""
    snap.inflate_into("ram", m.ram)
    values = {name: snap.json_section(name) for name in STATE_SECTIONS}
    try:
        return _apply(m, values)
    except StateError as exc:
        raise SnapshotError(f"{snap.path}: {exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:  # a device's check
        raise SnapshotError(f"{snap.path}: a saved field is invalid ({exc})") from None


def _apply(m: Machine, values: dict[str, Any]) -> int:
    mach = Fields(values["machine"], "machine")
    m.clock.load_state(mach.raw("clock"))
    m.bus.load_state(values["apics"])
    m.partition.load_state(values["partition"])
    arch = Fields({"arch": values["arch"]}, "snapshot").seq("arch", m.vcpu_count)
    for a, saved in zip(m.arch, arch, strict=True):
        a.load_state(saved)
    m.ports.load_state(mach.raw("ports"))
    m.neg.load_state(mach.raw("negotiation"), m.vcpu_count)
    _load_devices(m, Fields(values["devices"], "devices"))
    vcpus = Fields({"vcpus": values["vcpus"]}, "snapshot").seq("vcpus", m.vcpu_count)
    for v, saved in zip(m.vcpus, vcpus, strict=True):
        _load_vcpu(v, Fields(saved, f"vcpus[{v.index}]"))
    m.T, m.flushes = mach.uint("T", 0, MAX_TIME), mach.uint("flushes", 0, MAX_TIME)
    if m.clock.tsc() < m.T:
        raise StateError("machine.T: later than the clock")
    rr = mach.uint("rr", 0, MAX_TIME)
    pages = {o.gpa for o in m.partition.overlays() if not o.writable}
    for v in m.vcpus:
        v.resync()  # the engine's cached TSC offset and EFER
        v.set_protected(pages)
        v.map_apic(m.arch[v.index].apic_base_address)  # a relocated xAPIC page (IA32_APIC_BASE)
    m.update_fast_paths()
    return rr


def _load_devices(m: Machine, f: Fields) -> None:
    have = stateful_devices(m)
    saved = set(f.d)
    if saved != set(have):
        extra, missing = sorted(saved - set(have)), sorted(set(have) - saved)
        raise StateError("devices: the snapshot's devices differ from this machine's"
                         + (f" (not in this machine: {', '.join(extra)[:200]})" if extra else "")
                         + (f" (not in the snapshot: {', '.join(missing)})" if missing else ""))
    for name, dev in have.items():
        dev.load_state(f.d[name])


def _load_vcpu(v: Vcpu, f: Fields) -> None:
    ram = v.m.ram_size
    entry = f.d.get("multiboot_entry")
    mb: tuple[int, int] | None = None
    if entry is not None:
        pair = f.uints("multiboot_entry", 2, 0, ram - 1)
        mb = (pair[0], pair[1])
    native = f.sub("native")
    counts = {k: native.uint(k, 0, MAX_TIME) for k in CLOCK_FIELDS}
    flags = {k: f.flag(k) for k in ("halted", "idle", "wait_sipi", "nmi_pending")}
    sipi, used = f.opt_uint("sipi_vector", 0, 0xFF), f.uint("ticks_used", 0, MAX_TIME)
    v.stats.load_state(f.sub("stats"))
    v.load_cpu(f.raw("cpu"))
    v.set_clock_state(counts)
    v.halted, v.idle, v.wait_sipi, v.nmi_pending = (flags["halted"], flags["idle"], flags["wait_sipi"],
                                                    flags["nmi_pending"])
    v.sipi_vector, v.ticks_used, v.multiboot_entry = sipi, used, mb
