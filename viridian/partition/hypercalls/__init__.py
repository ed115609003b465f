"""Hypercall handlers (TLFS §3, §9-§14), registered declaratively on ``HV_CALLS``.

Each module below decorates its handlers; importing this package registers them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from viridian.abi.dispatch import HypercallTable

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

HV_CALLS: HypercallTable[VirtualProcessor] = HypercallTable("hyper-v")


def load_all() -> HypercallTable[VirtualProcessor]:
    """Import every handler module (idempotent) and return the filled table."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return HV_CALLS
