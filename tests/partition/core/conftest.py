"""Fixtures for the core-MSR tests: ``kit`` builds partitions without APIC models, performs RDMSR/WRMSR
with "#GP" as a plain value, and grants CPUID bits no QEMU flag sets (HypercallMsrLock, TSC invariant)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from msr.faults import Fault
from viridian.partition.partition import Partition
from viridian.tlfs.msrs import HvMsr

GP = "#GP"
OS_ID = 0x8100_0000_0000_0000  # Linux-style guest OS ID (any non-zero value works)


class _Granted:
    """The partition's CPUID offer plus extra privilege/feature bits (every other attribute is the
    real offer's)."""

    def __init__(self, base: Any, privileges: int, features: int) -> None:
        self._base, self._privileges, self._features = base, privileges, features

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    @property
    def privileges(self) -> Any:
        return self._base.privileges | self._privileges

    @property
    def features(self) -> Any:
        return self._base.features | self._features

    @property
    def privilege_mask(self) -> int:
        return int(self._base.privilege_mask) | self._privileges

    @property
    def feature_mask(self) -> int:
        return int(self._base.feature_mask) | self._features


class Kit:
    """What every core test needs."""

    GP = GP
    OS_ID = OS_ID

    def __init__(self, make_world: Callable[..., Any]) -> None:
        self._make_world = make_world

    def world(self, flags: str = "hv-relaxed", *, vp_count: int = 2, mem_mib: int = 4) -> Any:
        """A World over ``mem_mib`` MiB of RAM, no APIC models (these MSRs never touch the APIC)."""
        return self._make_world(flags, vp_count=vp_count, mem_mib=mem_mib, apics=False)

    @staticmethod
    def grant(part: Partition, *, privileges: int = 0, features: int = 0) -> None:
        """Offer extra bits for the rest of the test (surviving the refresh a GUEST_OS_ID write does)."""
        original = part._refresh_offer

        def refresh() -> None:
            original()
            part.offer = _Granted(part.offer, privileges, features)  # type: ignore[assignment]

        part._refresh_offer = refresh  # type: ignore[method-assign]
        refresh()

    @staticmethod
    def rd(part: Partition, index: int, vp: int = 0) -> int | str:
        """RDMSR on ``vp``: the value, or "#GP"."""
        res = part.vps[vp].rdmsr(index)
        if isinstance(res, Fault):
            assert res.vector == 13 and res.error_code == 0, res
            return GP
        assert isinstance(res, int), res
        return res

    @staticmethod
    def wr(part: Partition, index: int, value: int, vp: int = 0) -> str | None:
        """WRMSR on ``vp``: None on success, or "#GP"."""
        res = part.vps[vp].wrmsr(index, value)
        if isinstance(res, Fault):
            assert res.vector == 13 and res.error_code == 0, res
            return GP
        assert res is None, res
        return None

    def set_os_id(self, part: Partition, value: int = OS_ID) -> None:
        assert self.wr(part, HvMsr.GUEST_OS_ID, value) is None


@pytest.fixture
def kit(make_world: Callable[..., Any]) -> Kit:
    return Kit(make_world)
