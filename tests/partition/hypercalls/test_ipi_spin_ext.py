"""HvCallSendSyntheticClusterIpi(Ex), HvCallNotifyLongSpinWait and HvExtCallQueryCapabilities."""

from __future__ import annotations

import pytest
from hc_harness import CONVS, MODE_IDS, MODES, OUT_GPA, call, grant, make, revoke_recommendations, u32, u64

from viridian.tlfs.cpuid import PartitionPrivilege, Recommendation
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.inputs import ALL_VPS, encode_vp_set
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
EXT = int(PartitionPrivilege.ENABLE_EXTENDED_HYPERCALLS)


def ipi_block(vector: int, mask: int, vtl: int = 0, rsvd: bytes = bytes(3)) -> bytes:
    return u32(vector) + bytes([vtl]) + rsvd + u64(mask)


def ipi_ex_block(vector: int, vps: list[int] | None, vtl: int = 0) -> tuple[bytes, int]:
    fmt, mask, banks = encode_vp_set(ALL_VPS if vps is None else vps)
    head = u32(vector) + bytes([vtl]) + bytes(3) + u64(fmt) + u64(mask)
    return head + b"".join(u64(b) for b in banks), len(banks)


# -- SendSyntheticClusterIpi -------------------------------------------------------------------------------
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_ipi(conv: str, long_mode: bool) -> None:
    w = make()
    res = call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI, ipi_block(0x31, 0b111 | 1 << 50), vp=1,
               conv=conv, long_mode=long_mode)
    assert res.status == OK and res.ram_clean
    assert w.services.ipis == [(1, 0, 0x31), (1, 1, 0x31), (1, 2, 0x31)]  # the sender too; VP 50 absent


def test_ipi_fast_register_layout() -> None:
    """Windows' fast form: RDX = Vector | TargetVtl << 32, R8 = ProcessorMask (the same bytes)."""
    w = make()
    res = call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI, u64(0x10 << 32 | 0xFF) + u64(0b10), conv="fast")
    assert res.status == OK and w.services.ipis == [(0, 1, 0xFF)]


@pytest.mark.parametrize(("vector", "vtl", "rsvd"), [
    (0x0F, 0, bytes(3)), (0x100, 0, bytes(3)), (0xFFFF_FFFF, 0, bytes(3)),  # TLFS: INVALID_PARAMETER
    (0x40, 0x01, bytes(3)), (0x40, 0x11, bytes(3)), (0x40, 0x20, bytes(3)),  # VTL != 0, RsvdZ bits
    (0x40, 0, b"\0\0\1"),
])
def test_ipi_bad_input(vector: int, vtl: int, rsvd: bytes) -> None:
    w = make()
    res = call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI, ipi_block(vector, 1, vtl, rsvd))
    assert res.status == HvStatus.INVALID_PARAMETER and w.services.ipis == []


def test_ipi_empty_mask_succeeds() -> None:
    w = make()
    assert call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI, ipi_block(0x40, 0)).status == OK
    assert w.services.ipis == []


@pytest.mark.parametrize(("code", "bit"), [
    (HvCall.SEND_SYNTHETIC_CLUSTER_IPI, Recommendation.SYNTHETIC_CLUSTER_IPI),
    (HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, Recommendation.SYNTHETIC_CLUSTER_IPI),
    (HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, Recommendation.EX_PROCESSOR_MASKS),
])
def test_ipi_not_offered(code: int, bit: Recommendation) -> None:
    w = make()
    revoke_recommendations(w.partition, int(bit))
    res = call(w.partition, code, ipi_block(0x40, 1) + bytes(8))
    assert res.status == HvStatus.ACCESS_DENIED and w.services.ipis == []


@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_ipi_ex_sparse_banks(conv: str, long_mode: bool) -> None:
    w = make(vp_count=130)
    block, banks = ipi_ex_block(0xEF, [3, 63, 64, 127, 129, 130, 1000])
    res = call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, block, vp=129, conv=conv,
               long_mode=long_mode, var_qwords=banks)
    if conv == "fast" and not long_mode:  # 24+ bytes of fast input = XMM input, x64 only
        assert res.outcome.fault is not None and w.services.ipis == []
        return
    assert res.status == OK and res.ram_clean
    assert w.services.ipis == [(129, t, 0xEF) for t in (3, 63, 64, 127, 129)]


def test_ipi_ex_all_and_errors() -> None:
    w = make(vp_count=5)
    block, banks = ipi_ex_block(0x50, None)
    assert call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, block, var_qwords=banks).status == OK
    assert [t for _, t, _ in w.services.ipis] == [0, 1, 2, 3, 4]
    w.services.ipis.clear()
    block, banks = ipi_ex_block(0x50, [1])
    bad = call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, block, var_qwords=banks + 1)
    assert bad.status == HvStatus.INVALID_HYPERCALL_INPUT  # KVM: bank words != popcount
    block, banks = ipi_ex_block(0x05, [1])
    assert call(w.partition, HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, block,
                var_qwords=banks).status == HvStatus.INVALID_PARAMETER
    assert w.services.ipis == []


# -- NotifyLongSpinWait ------------------------------------------------------------------------------------
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_spin_wait(conv: str, long_mode: bool) -> None:
    w = make()
    res = call(w.partition, HvCall.NOTIFY_LONG_SPIN_WAIT, u64(0xFFFF_FFFF_0000_1FFF), vp=2, conv=conv,
               long_mode=long_mode)
    assert res.status == OK and res.ram_clean  # RDX[63:32] RsvdZ is not checked (KVM)
    assert w.services.yields == [(2, "long spin wait")]


@pytest.mark.parametrize("flags", ["hv-relaxed,hv-vpindex", "hv-relaxed,hv-spinlocks=0", "hv-relaxed,hv-spinlocks=0xffffffff"])
def test_spin_wait_not_offered(flags: str) -> None:
    w = make(flags)
    res = call(w.partition, HvCall.NOTIFY_LONG_SPIN_WAIT, u64(1), conv="fast")
    assert res.status == HvStatus.ACCESS_DENIED and w.services.yields == []


def test_spin_wait_rejects_rep_and_var_header() -> None:
    w = make()
    assert call(w.partition, HvCall.NOTIFY_LONG_SPIN_WAIT, u64(1), conv="fast",
                rep_count=1).status == HvStatus.INVALID_HYPERCALL_INPUT
    assert call(w.partition, HvCall.NOTIFY_LONG_SPIN_WAIT, u64(1) * 2,
                var_qwords=1).status == HvStatus.INVALID_HYPERCALL_INPUT


# -- ExtQueryCapabilities ----------------------------------------------------------------------------------
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
def test_ext_query_capabilities(long_mode: bool) -> None:
    w = make()
    grant(w.partition, privileges=EXT)
    res = call(w.partition, HvCall.EXT_QUERY_CAPABILITIES, long_mode=long_mode, out_size=8)
    assert res.status == OK and res.output == bytes(8) and res.ram_clean


@pytest.mark.parametrize("xmm_output", [False, True])
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
def test_ext_query_capabilities_fast_is_invalid_parameter(long_mode: bool, xmm_output: bool) -> None:
    w = make()
    grant(w.partition, privileges=EXT, xmm_output=xmm_output)
    res = call(w.partition, HvCall.EXT_QUERY_CAPABILITIES, conv="fast", long_mode=long_mode)
    assert res.status == HvStatus.INVALID_PARAMETER and res.outcome.fault is None  # KVM


@pytest.mark.parametrize("gpa", [OUT_GPA + 4, 0x1FFC, 256 << 10, (1 << 64) - 8])
def test_ext_query_capabilities_bad_output_gpa(gpa: int) -> None:
    w = make()
    grant(w.partition, privileges=EXT)
    res = call(w.partition, HvCall.EXT_QUERY_CAPABILITIES, out_gpa=gpa)
    assert res.status == HvStatus.INVALID_ALIGNMENT and res.ram_clean


def test_ext_query_capabilities_not_offered() -> None:
    w = make()
    res = call(w.partition, HvCall.EXT_QUERY_CAPABILITIES, out_size=8)
    assert res.status == HvStatus.ACCESS_DENIED and res.ram_clean
