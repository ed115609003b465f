"""parse_libvirt: every <hyperv> element, document shapes, passthrough, malformed input."""

from __future__ import annotations

import pytest

from viridian.config import Enlightenments, parse_libvirt, parse_qemu
from viridian.errors import ConfigError


def hv(body: str, mode: str = "") -> str:
    attr = f" mode='{mode}'" if mode else ""
    return f"<hyperv{attr}>{body}</hyperv>"


ELEMENT_CASES: list[tuple[str, dict[str, object]]] = [
    ("<relaxed state='on'/>", {"relaxed": True}),
    ("<vapic state='on'/>", {"vapic": True}),
    ("<spinlocks state='on' retries='8191'/>", {"spinlocks": 8191}),
    ("<spinlocks state='off'/>", {}),
    ("<vpindex state='on'/>", {"vpindex": True}),
    ("<runtime state='on'/>", {"runtime": True}),
    ("<vpindex state='on'/><synic state='on'/>", {"vpindex": True, "synic": True}),
    ("<reset state='on'/>", {"reset": True}),
    ("<vendor_id state='on' value='KVM Hv'/>", {"vendor_id": "KVM Hv"}),
    ("<vendor_id state='off'/>", {}),
    ("<frequencies state='on'/>", {"frequencies": True}),
    ("<reenlightenment state='on'/>", {"reenlightenment": True}),
    ("<vpindex state='on'/><tlbflush state='on'/>", {"vpindex": True, "tlbflush": True}),
    ("<vpindex state='on'/><vapic state='on'/><tlbflush state='on'><direct state='on'/><extended state='on'/></tlbflush>",
     {"vpindex": True, "vapic": True, "tlbflush": True, "tlbflush_direct": True, "tlbflush_ext": True}),
    ("<vpindex state='on'/><ipi state='on'/>", {"vpindex": True, "ipi": True}),
    ("<vapic state='on'/><evmcs state='on'/>", {"vapic": True, "evmcs": True}),
    ("<avic state='on'/>", {"avic": True}),
    ("<emsr_bitmap state='on'/>", {"emsr_bitmap": True}),
    ("<xmm_input state='on'/>", {"xmm_input": True}),
    ("<guest_idle state='on'/>", {"guest_idle": True}),
    ("<relaxed state='off'/>", {}),
]


@pytest.mark.parametrize(("body", "expected"), ELEMENT_CASES, ids=[c[0][:60] for c in ELEMENT_CASES])
def test_each_element(body: str, expected: dict[str, object]) -> None:
    assert parse_libvirt(hv(body)) == Enlightenments(**expected)  # type: ignore[arg-type]


def test_stimer_direct_needs_the_whole_chain() -> None:
    body = ("<vpindex state='on'/><synic state='on'/><stimer state='on'><direct state='on'/></stimer>")
    domain = (f"<domain type='kvm'><features>{hv(body, 'custom')}</features>"
              "<clock offset='localtime'><timer name='hypervclock' present='yes'/></clock></domain>")
    c = parse_libvirt(domain)
    assert c.stimer and c.stimer_direct and c.time


FULL_DOMAIN = """<?xml version='1.0'?>
<domain type='kvm'>
  <name>win</name>
  <features>
    <acpi/><apic/>
    <hyperv mode='custom'>
      <relaxed state='on'/>
      <vapic state='on'/>
      <spinlocks state='on' retries='8191'/>
      <vpindex state='on'/>
      <runtime state='on'/>
      <synic state='on'/>
      <stimer state='on'><direct state='on'/></stimer>
      <reset state='on'/>
      <vendor_id state='on' value='KVM Hv'/>
      <frequencies state='on'/>
      <reenlightenment state='on'/>
      <tlbflush state='on'><direct state='on'/><extended state='on'/></tlbflush>
      <ipi state='on'/>
      <evmcs state='on'/>
      <emsr_bitmap state='on'/>
      <xmm_input state='on'/>
    </hyperv>
    <kvm><hidden state='on'/></kvm>
  </features>
  <clock offset='localtime'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='hypervclock' present='yes'/>
  </clock>
  <devices><panic model='hyperv'/></devices>
</domain>
"""


def test_full_domain_equals_the_qemu_command_line() -> None:
    expected = parse_qemu(
        "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-runtime,hv-synic,hv-stimer,hv-stimer-direct,"
        "hv-reset,hv-vendor-id=KVM Hv,hv-frequencies,hv-reenlightenment,hv-tlbflush,hv-tlbflush-direct,"
        "hv-tlbflush-ext,hv-ipi,hv-evmcs,hv-emsr-bitmap,hv-xmm-input,hv-time,hv-crash")
    assert parse_libvirt(FULL_DOMAIN) == expected


def test_features_element_and_domain_without_hyperv() -> None:
    fragment = hv("<relaxed state='on'/>")
    assert parse_libvirt(f"<features>{fragment}</features>") == Enlightenments(relaxed=True)
    assert parse_libvirt("<domain type='kvm'><features><acpi/></features></domain>") == Enlightenments()


@pytest.mark.parametrize("mode", ["passthrough", "host-model"])
def test_passthrough_modes(mode: str) -> None:
    assert parse_libvirt(hv("", mode)) == parse_qemu("hv-passthrough")
    assert parse_libvirt(hv("<guest_idle state='on'/>", mode)) == parse_qemu("hv-passthrough,hv-guest-idle")


@pytest.mark.parametrize(("xml", "needle"), [
    ("<hyperv><relaxed state='on'></hyperv>", "malformed libvirt XML"),
    ("not xml at all", "malformed libvirt XML"),
    ("<!DOCTYPE x [<!ENTITY e 'boom'>]><hyperv>&e;</hyperv>", "DOCTYPE/ENTITY"),
    ("<cpu/>", "expected <domain>, <features> or <hyperv>"),
    (hv("<relaxed/>"), "<relaxed>: state must be 'on' or 'off'"),
    (hv("<relaxed state='yes'/>"), "<relaxed>: state must be"),
    (hv("<relaxd state='on'/>"), "unknown libvirt Hyper-V feature <relaxd> (did you mean relaxed?)"),
    (hv("<spinlocks state='on'/>"), "retries must be a number"),
    (hv("<spinlocks state='on' retries='4094'/>"), "retries must be 4095"),
    (hv("<vendor_id state='on' value='ThirteenChars'/>"), "1 to 12 characters"),
    (hv("<vendor_id state='on'/>"), "1 to 12 characters"),
    (hv("<stimer state='on'><indirect state='on'/></stimer>"), "unexpected child <indirect>"),
    (hv("", "sometimes"), "mode must be custom, passthrough or host-model"),
    (hv("<synic state='on'/>"), "hv-synic requires hv-vpindex"),
    # hv-time comes from <clock><timer name='hypervclock'/>, absent in a bare fragment
    (hv("<vpindex state='on'/><synic state='on'/><stimer state='on'/>"), "hv-stimer requires hv-time"),
])
def test_errors(xml: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_libvirt(xml)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
