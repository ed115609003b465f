"""Synthetic MSR handlers (TLFS App. C), registered declaratively on one table per partition model.

Each module below decorates its handlers on ``HV_MSRS``; importing this package registers them all.
Indices in the Hyper-V range that nobody declared answer #GP (KVM: unknown HV MSR -> #GP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msr.registry import MsrTable
from viridian.tlfs.msrs import HV_MSR_FIRST, HV_MSR_LAST

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

HV_MSRS: MsrTable[VirtualProcessor] = MsrTable("hyper-v", claims=lambda i: HV_MSR_FIRST <= i <= HV_MSR_LAST)


def load_all() -> MsrTable[VirtualProcessor]:
    """Import every handler module (idempotent) and return the filled table."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return HV_MSRS
