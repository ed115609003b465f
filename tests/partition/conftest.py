"""Shared fixtures for engine-free partition tests: a partition over plain RAM with recording services."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from viridian.abi.memory import BytesMemory
from viridian.clock import VirtualClock
from viridian.partition.partition import Partition
from viridian.partition.services import RecordingServices

ALL_FLAGS = (
    "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-runtime,hv-crash,hv-time,hv-synic,hv-stimer,"
    "hv-stimer-direct,hv-tlbflush,hv-tlbflush-ext,hv-ipi,hv-reset,hv-frequencies,hv-reenlightenment,"
    "hv-xmm-input,hv-guest-idle"
)


@dataclass
class World:
    """A partition and everything a test inspects around it."""

    partition: Partition
    memory: BytesMemory
    services: RecordingServices
    clock: VirtualClock
    apics: list[Any]


def _make_apics(count: int, clock: VirtualClock, services: RecordingServices) -> list[Any]:
    """Real local APIC models on one bus (viridian.devices), so APIC MSRs act on real state."""
    from viridian.devices.apic_bus import ApicBus

    bus = ApicBus.create(count, clock)
    return list(bus.apics)


def build_world(flags: str = ALL_FLAGS, *, vp_count: int = 2, mem_mib: int = 4, apics: bool = True,
                rep_budget: int = 256) -> World:
    from viridian.config.qemu import parse_qemu

    config = parse_qemu(flags)
    memory = BytesMemory(mem_mib << 20)
    services = RecordingServices()
    clock = VirtualClock()
    apic_list = _make_apics(vp_count, clock, services) if apics else [None] * vp_count
    part = Partition(config, memory, vp_count=vp_count, services=services, clock=clock, apics=apic_list,
                     rep_budget=rep_budget)
    return World(part, memory, services, clock, apic_list)


@pytest.fixture
def make_world() -> Callable[..., World]:
    """``make_world(flags=..., vp_count=..., mem_mib=..., apics=True)`` -> World."""
    return build_world
