"""Offer.from_leaves decodes the gating view the partition layer uses."""

from __future__ import annotations

from viridian.config import Enlightenments, parse_qemu, parse_xen
from viridian.partition.cpuid import CpuidRegs, Offer, hv_leaves
from viridian.tlfs.cpuid import Feature, PartitionPrivilege, Recommendation


def test_offer_from_qemu_flags() -> None:
    offer = Offer.from_leaves(hv_leaves(parse_qemu("hv-relaxed,hv-vapic,hv-vpindex,hv-synic,hv-spinlocks=0x1fff")))
    assert offer.hv_present
    assert offer.max_leaf == 0x40000005
    assert offer.privilege_mask == 0x74 | (0x30 << 32)
    assert PartitionPrivilege.ACCESS_SYNIC_REGS in offer.privileges
    assert PartitionPrivilege.POST_MESSAGES in offer.privileges
    assert offer.features == Feature.CPU_DYNAMIC_PARTITIONING
    assert offer.recommendations == Recommendation.RELAXED_TIMING | Recommendation.APIC_MSRS
    assert offer.spin_retries == 0x1FFF
    assert (offer.max_vps, offer.max_lps, offer.nested_eax) == (0xFFFFFFFF, 64, 0)
    assert int(offer.power) == 0
    assert offer.has_privilege(0x40) and not offer.has_privilege(0x1)
    assert offer.has_feature(0x8) and not offer.has_feature(0x10)
    assert offer.has_recommendation(0x28) and not offer.has_recommendation(0x4)


def test_offer_without_enlightenments_is_not_present() -> None:
    offer = Offer.from_leaves(hv_leaves(Enlightenments()))
    assert not offer.hv_present
    assert offer.max_leaf == 0
    assert not offer.has_privilege(0)  # nothing passes without Hv#1


def test_offer_nested_and_missing_leaves() -> None:
    offer = Offer.from_leaves(hv_leaves(parse_qemu("hv-vapic,hv-evmcs,hv-emsr-bitmap")))
    assert offer.nested_eax == 0x80101
    partial = Offer.from_leaves({0x40000001: CpuidRegs(0x31237648, 0, 0, 0)})
    assert partial.hv_present and partial.privilege_mask == 0 and partial.spin_retries == 0


def test_offer_tracks_xen_guest_os_id() -> None:
    config = parse_xen("defaults")
    assert Offer.from_leaves(hv_leaves(config, 0)).recommendation_mask == 0
    assert Offer.from_leaves(hv_leaves(config, 0x0001040A00004F7C)).recommendation_mask == 0x28
