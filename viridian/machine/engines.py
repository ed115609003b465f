"""The vCPU engines by name: the only place the machine core names an engine (imported lazily, on use).

An engine is a package under viridian/machine/ whose vCPU class implements
:class:`viridian.machine.backend.VcpuBackend`, and a build module with ``engine_identity() -> dict`` (what
records and snapshots carry: the engine, its version, its library's hash) and ``identity_note(recorded) ->
str | None`` (one line when a recorded identity differs from this build). Registration point: add a line to
:data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from viridian.errors import UserError

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuFactory

DEFAULT = "unicorn"


@dataclass(frozen=True)
class EngineEntry:
    vcpu: str  # "module:attribute" of the VcpuBackend class
    build: str  # module with engine_identity() and identity_note(recorded)
    summary: str
    # "module:factory" of what the engine shares among one machine's vCPUs (built before them: Machine.engine_state;
    # its sync_code(v, slice_end) runs after every slice), or "" for none
    machine_state: str = ""


ENGINES: dict[str, EngineEntry] = {
    # the fast engine: one Unicorn instance per vCPU, compiled hot paths, engine patches (unicorn/ENGINE_NOTES.md)
    "unicorn": EngineEntry("viridian.machine.unicorn.vcpu:Vcpu", "viridian.machine.unicorn.engine_build",
                           "fast: Unicorn with compiled hot paths (default)",
                           "viridian.machine.unicorn.coherence:SharedState"),
    # the reference engine: Unicorn's public API only, one instance shared by a machine's vCPUs, Python hooks
    "reference": EngineEntry("viridian.machine.reference.vcpu:Vcpu", "viridian.machine.reference.build",
                             "reference: Unicorn through its public API only (slower; the oracle)"),
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry(name: str) -> EngineEntry:
    entry = ENGINES.get(name)
    if entry is None:
        raise UserError(f"--engine {name}: choose {' or '.join(sorted(ENGINES))}")
    return entry


def vcpu_class(name: str = DEFAULT) -> VcpuFactory:
    """The vCPU class of engine ``name`` (imports the engine on first use)."""
    return cast("VcpuFactory", _load(_entry(name).vcpu))


def machine_state(name: str, machine: Any) -> Any:
    """What engine ``name`` shares among ``machine``'s vCPUs (None when it keeps nothing machine-wide)."""
    path = _entry(name).machine_state
    return _load(path)(machine) if path else None


def build(name: str = DEFAULT) -> Any:
    """The engine's build module (``engine_identity()``, ``identity_note(recorded)``)."""
    return importlib.import_module(_entry(name).build)


def identity(name: str = DEFAULT) -> dict[str, Any]:
    """Which engine (and build) runs: carried by records and snapshots."""
    return cast("dict[str, Any]", build(name).engine_identity())


def identity_note(recorded: Any, name: str = DEFAULT) -> str | None:
    """One line when ``recorded`` (a record's or snapshot's identity) differs from this build, else None."""
    return cast("str | None", build(name).identity_note(recorded))


__all__ = ["DEFAULT", "ENGINES", "EngineEntry", "build", "identity", "identity_note", "machine_state", "vcpu_class"]
