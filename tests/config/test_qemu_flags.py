"""parse_qemu: every hv-* flag, value syntax, passthrough, errors, and to_qemu round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.config import Enlightenments, parse_qemu
from viridian.errors import ConfigError

# flag string -> the fields it must set (everything else stays at the default).
# Dependencies (QEMU kvm_hyperv_properties) are included where a flag needs them.
FLAG_CASES: list[tuple[str, dict[str, object]]] = [
    ("hv-relaxed", {"relaxed": True}),
    ("hv-vapic", {"vapic": True}),
    ("hv-spinlocks=0x1fff", {"spinlocks": 0x1FFF}),
    ("hv-spinlocks=8191", {"spinlocks": 8191}),
    ("hv-spinlocks=017777", {"spinlocks": 0o17777}),
    ("hv-vpindex", {"vpindex": True}),
    ("hv-runtime", {"runtime": True}),
    ("hv-crash", {"crash": True}),
    ("hv-time", {"time": True}),
    ("hv-vpindex,hv-synic", {"vpindex": True, "synic": True}),
    ("hv-vpindex,hv-synic,hv-time,hv-stimer", {"vpindex": True, "synic": True, "time": True, "stimer": True}),
    ("hv-vpindex,hv-synic,hv-time,hv-stimer,hv-stimer-direct",
     {"vpindex": True, "synic": True, "time": True, "stimer": True, "stimer_direct": True}),
    ("hv-vpindex,hv-tlbflush", {"vpindex": True, "tlbflush": True}),
    ("hv-vpindex,hv-tlbflush,hv-tlbflush-ext", {"vpindex": True, "tlbflush": True, "tlbflush_ext": True}),
    ("hv-vapic,hv-tlbflush-direct", {"vapic": True, "tlbflush_direct": True}),
    ("hv-vpindex,hv-ipi", {"vpindex": True, "ipi": True}),
    ("hv-reset", {"reset": True}),
    ("hv-frequencies", {"frequencies": True}),
    ("hv-reenlightenment", {"reenlightenment": True}),
    ("hv-xmm-input", {"xmm_input": True}),
    ("hv-avic", {"avic": True}),
    ("hv-apicv", {"avic": True}),
    ("hv-vapic,hv-evmcs", {"vapic": True, "evmcs": True}),
    ("hv-emsr-bitmap", {"emsr_bitmap": True}),
    ("hv-no-nonarch-coresharing=on", {"no_nonarch_coresharing": "on"}),
    ("hv-no-nonarch-coresharing=auto", {"no_nonarch_coresharing": "auto"}),
    ("hv-no-nonarch-coresharing=off", {}),
    ("hv-guest-idle", {"guest_idle": True}),
    ("hv-vendor-id=KVMKVMKVM", {"vendor_id": "KVMKVMKVM"}),
    ("hv-vendor-id=a,,b", {"vendor_id": "a,b"}),
    ("hv-version-id-build=0x1bbc", {"version_build": 0x1BBC}),
    ("hv-version-id-major=6", {"version_major": 6}),
    ("hv-version-id-minor=1", {"version_minor": 1}),
    ("hv-version-id-spack=2", {"version_spack": 2}),
    ("hv-version-id-sbranch=3", {"version_sbranch": 3}),
    ("hv-version-id-snumber=0x123456", {"version_snumber": 0x123456}),
    ("x-hv-max-vps=0x40", {"max_vps": 0x40}),
    ("x-hv-max-vps=-1", {}),
    ("x-hv-max-lps=128", {"max_lps": 128}),
    ("hv-enforce-cpuid", {}),
    ("hv-syndbg=off", {}),
    ("hv-passthrough=off", {}),
]


@pytest.mark.parametrize(("flags", "expected"), FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_each_flag(flags: str, expected: dict[str, object]) -> None:
    assert parse_qemu(flags) == Enlightenments(**expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("spelling", [
    "hv-relaxed", "hv-relaxed=on", "hv-relaxed=ON", "hv-relaxed=true", "hv-relaxed=yes", "+hv-relaxed",
    "hv_relaxed", "host,hv-relaxed", "qemu64,+x2apic,hv-relaxed,kvm=off", " hv-relaxed ,", "Skylake-Client-v4,hv-relaxed",
])
def test_boolean_spellings_on(spelling: str) -> None:
    assert parse_qemu(spelling) == Enlightenments(relaxed=True)


@pytest.mark.parametrize("spelling", ["hv-relaxed=off", "hv-relaxed=false", "hv-relaxed=no", "-hv-relaxed",
                                      "hv-relaxed,hv-relaxed=off", "host", ""])
def test_boolean_spellings_off(spelling: str) -> None:
    assert parse_qemu(spelling) == Enlightenments()


def test_later_flag_wins() -> None:
    assert parse_qemu("hv-spinlocks=0x1000,hv-spinlocks=0x2000").spinlocks == 0x2000


def test_passthrough_is_everything_but_syndbg_with_host_identity() -> None:
    c = parse_qemu("hv-passthrough")
    on = {"relaxed", "vapic", "vpindex", "runtime", "crash", "time", "synic", "stimer", "stimer_direct",
          "tlbflush", "tlbflush_ext", "tlbflush_direct", "ipi", "reset", "frequencies", "reenlightenment",
          "xmm_input", "avic", "evmcs", "emsr_bitmap"}
    for name in on:
        assert getattr(c, name) is True, name
    assert c.guest_idle is False
    assert (c.vendor_id, c.spinlocks, c.max_vps, c.max_lps) == ("Linux KVM Hv", 0xFFF, 1024, 64)
    assert c.no_nonarch_coresharing == "off"


def test_passthrough_overrides_other_hv_flags_but_keeps_our_extension() -> None:
    c = parse_qemu("hv-relaxed=off,hv-spinlocks=0x2000,hv-vendor-id=Foo,hv-passthrough,hv-guest-idle")
    assert c.relaxed and c.spinlocks == 0xFFF and c.vendor_id == "Linux KVM Hv" and c.guest_idle


@pytest.mark.parametrize(("flags", "needle"), [
    ("hv-relaxd", "'hv-relaxd' (did you mean hv-relaxed?)"),
    ("hv-stimer-directt", "hv-stimer-direct"),
    ("hv-bogus", "unknown Hyper-V flag 'hv-bogus'"),
    ("x-hv-bogus", "unknown Hyper-V flag 'x-hv-bogus'"),
    ("hv-relaxed=maybe", "hv-relaxed: expected on or off"),
    ("hv-spinlocks", "hv-spinlocks needs a value"),
    ("hv-spinlocks=lots", "hv-spinlocks: expected an integer"),
    ("hv-spinlocks=0x100000000", "does not fit in 32 bits"),
    ("hv-version-id-major=0x10000", "does not fit in 16 bits"),
    ("hv-version-id-sbranch=256", "does not fit in 8 bits"),
    ("hv-no-nonarch-coresharing=sometimes", "expected on, off or auto"),
    ("hv-vendor-id=ThirteenChars", "at most 12"),
    ("hv-vendor-id", "hv-vendor-id needs a value"),
    ("hv-syndbg", "not modelled"),
])
def test_errors_name_the_flag(flags: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_qemu(flags)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


ROUND_TRIP = [
    "",
    "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff",
    "hv-passthrough",
    "hv-passthrough,hv-guest-idle,hv-no-nonarch-coresharing=auto",
    "hv-vendor-id=a,,b,hv-version-id-build=1,hv-version-id-snumber=0xffffffff,x-hv-max-vps=7,x-hv-max-lps=0",
    "hv-spinlocks=0xffffffff",
    "hv-vpindex,hv-synic,hv-time,hv-stimer,hv-stimer-direct,hv-vapic,hv-evmcs,hv-emsr-bitmap",
]


@pytest.mark.parametrize("flags", ROUND_TRIP)
def test_round_trip(flags: str) -> None:
    c = parse_qemu(flags)
    assert parse_qemu(c.to_qemu()) == c


def test_to_qemu_is_canonical() -> None:
    assert parse_qemu("hv-spinlocks=8191,hv-vapic,hv_relaxed").to_qemu() == "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff"
    assert parse_qemu("").to_qemu() == ""


_DEPS = {"stimer": ("time", "synic", "vpindex"), "synic": ("vpindex",), "tlbflush": ("vpindex",),
         "ipi": ("vpindex",), "evmcs": ("vapic",), "stimer_direct": ("stimer", "time", "synic", "vpindex"),
         "tlbflush_ext": ("tlbflush", "vpindex"), "tlbflush_direct": ("vapic",)}
_BOOLS = ["relaxed", "vapic", "vpindex", "runtime", "crash", "time", "synic", "stimer", "stimer_direct", "tlbflush",
          "tlbflush_ext", "tlbflush_direct", "ipi", "reset", "frequencies", "reenlightenment", "xmm_input", "avic",
          "evmcs", "emsr_bitmap", "guest_idle"]


@st.composite
def valid_configs(draw: st.DrawFn) -> Enlightenments:
    chosen = set(draw(st.sets(st.sampled_from(_BOOLS))))
    for name in list(chosen):
        chosen.update(_DEPS.get(name, ()))
    return Enlightenments(
        **dict.fromkeys(chosen, True),  # type: ignore[arg-type]
        spinlocks=draw(st.integers(0, 0xFFFFFFFF)),
        no_nonarch_coresharing=draw(st.sampled_from(["on", "off", "auto"])),
        vendor_id=draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)).strip(),
        version_build=draw(st.integers(0, 0xFFFFFFFF)),
        version_major=draw(st.integers(0, 0xFFFF)),
        version_sbranch=draw(st.integers(0, 0xFF)),
        max_vps=draw(st.integers(0, 0xFFFFFFFF)),
        max_lps=draw(st.integers(0, 0xFFFFFFFF)),
    )


@settings(derandomize=True, max_examples=300, deadline=None)
@given(valid_configs())
def test_round_trip_property(c: Enlightenments) -> None:
    c.validate()
    assert parse_qemu(c.to_qemu()) == c
