"""Every synthetic MSR index of viridian.tlfs.msrs is declared once on the Hyper-V table, gated by a CPUID
bit (KVM enforce_cpuid), cites its source, and #GPs on every access when the partition offers only Hv#1
and the hypercall MSRs (the privilege QEMU always sets)."""

from __future__ import annotations

from typing import Any

from msr.faults import Fault
from viridian.partition import msrs
from viridian.tlfs.msrs import HV_MSR_FIRST, HV_MSR_LAST, PARTITION_WIDE, HvMsr

TABLE = msrs.load_all()
ALWAYS = {HvMsr.GUEST_OS_ID, HvMsr.HYPERCALL}  # AccessHypercallMsrs: "unconditionally required" (QEMU)


def test_every_index_declared_gated_and_cited() -> None:
    assert {int(m) for m in HvMsr} == set(TABLE.specs)
    for spec in TABLE:
        assert HV_MSR_FIRST <= spec.index <= HV_MSR_LAST
        assert spec.gate is not None, spec.name
        assert spec.cite, spec.name
        assert spec.name == HvMsr(spec.index).name
    assert set(HvMsr) >= PARTITION_WIDE


def test_gp_when_only_hv1_is_offered(kit: Any) -> None:
    part = kit.world("hv-relaxed").partition
    kit.set_os_id(part)
    for index in (m for m in HvMsr if m not in ALWAYS):
        for vp in part.vps:
            for res in (vp.rdmsr(index), *(vp.wrmsr(index, v) for v in (0, 1, (1 << 64) - 1))):
                assert isinstance(res, Fault) and (res.vector, res.error_code) == (13, 0), index.name


def test_gp_without_hyperv_at_all(kit: Any) -> None:
    # KVM: every HV MSR #GPs unless 0x40000001.EAX == "Hv#1".
    part = kit.world("").partition
    for index in HvMsr:
        for res in (part.vps[0].rdmsr(index), part.vps[0].wrmsr(index, 0)):
            assert isinstance(res, Fault) and res.vector == 13, index.name
