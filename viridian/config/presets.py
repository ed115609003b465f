"""Named configurations and the single entry point the CLI uses (:func:`load_config`).

``none``
    No enlightenment. Every leaf 0x40000000-0x4000000A reads zero: max leaf 0 and 0x40000001.EAX != "Hv#1",
    so a guest sees "hypervisor present" (CPUID.1:ECX[31], set by the machine) but no Hyper-V interface.
    (QEMU/KVM without hv-* flags would show KVM's own "KVMKVMKVM" leaves there; we model no KVM PV
    interface, so the range is empty.)
``xen-3.4``
    What Xen 3.4 (2009, the first viridian.c) offered: guest OS ID + hypercall MSRs, VP index, APIC MSRs
    (EOI/ICR/TPR), relaxed timing and long-spin-wait notification (2047 retries). Expressed as style="xen"
    with only group ``base`` (which reproduces 3.4's 0x40000003 EAX = 0x70 and 0x40000004 EAX = 0x28),
    plus 3.4's identity: 0x40000002 = build 1, version 3.4 (xen_major/minor_version()), and no APIC assist
    (3.4 only zeroed the assist page).
``xen-defaults``
    Today's Xen ``viridian=1`` (libxl default groups).
``recommended``
    QEMU docs/system/i386/hyperv.rst "Recommendations": every implemented enlightenment except the listed
    exceptions, resolved for this machine: no hv-reset ("can be avoided"), no hv-evmcs / hv-emsr-bitmap /
    hv-tlbflush-direct (nested-only; no VMX here), no hv-avic (no hardware APICv), no
    hv-no-nonarch-coresharing (needs pinning), hv-spinlocks=0xfff (vCPUs share one host thread: always
    overcommitted); hv-crash and hv-reenlightenment kept (the machine consumes crash reports and never
    migrates). Plus our hv-guest-idle.
``linux``
    What ``viridian boot`` offers a Linux kernel (issue 7): ``recommended`` minus hv-reenlightenment (the
    machine never migrates, so there is no TSC-frequency change to announce and Linux's reenlightenment
    notifier has nothing to do). The frequency MSRs (hv-frequencies) stay offered.
``all``
    Every enlightenment this model can offer, including nested ones and hv-guest-idle.
"""

from __future__ import annotations

from viridian.config.enlightenments import Enlightenments
from viridian.config.libvirt import parse_libvirt
from viridian.config.qemu import parse_qemu
from viridian.config.xen import parse_xen
from viridian.errors import ConfigError

RECOMMENDED_FLAGS = (
    "hv-relaxed,hv-vapic,hv-spinlocks=0xfff,hv-vpindex,hv-runtime,hv-crash,hv-time,hv-synic,hv-stimer,"
    "hv-stimer-direct,hv-tlbflush,hv-tlbflush-ext,hv-ipi,hv-frequencies,hv-reenlightenment,hv-xmm-input,"
    "hv-guest-idle"
)
LINUX_FLAGS = ",".join(f for f in RECOMMENDED_FLAGS.split(",") if f != "hv-reenlightenment")
ALL_FLAGS = (
    "hv-relaxed,hv-vapic,hv-spinlocks=0xfff,hv-vpindex,hv-runtime,hv-crash,hv-time,hv-synic,hv-stimer,"
    "hv-stimer-direct,hv-tlbflush,hv-tlbflush-ext,hv-tlbflush-direct,hv-ipi,hv-reset,hv-frequencies,"
    "hv-reenlightenment,hv-xmm-input,hv-avic,hv-evmcs,hv-emsr-bitmap,hv-no-nonarch-coresharing=on,"
    "hv-guest-idle"
)


def _xen_34() -> Enlightenments:
    base = parse_xen(["base"])
    # Xen 3.4 viridian.c: 0x40000002 = {1, xen_major << 16 | xen_minor, 0, 0}; no APIC assist.
    return base.replace(version_build=1, version_major=3, version_minor=4, apic_assist=False)


PRESETS: dict[str, str] = {
    "none": "no enlightenments; hypervisor leaves read zero",
    "xen-3.4": "Xen 3.4 (2009): hypercall, VP index, APIC MSRs, relaxed timing, long spin wait",
    "xen-defaults": "Xen viridian=1 (libxl default groups)",
    "recommended": "QEMU's recommended Windows set (+ guest idle)",
    "linux": "recommended minus reenlightenment (viridian boot's default)",
    "all": "every enlightenment this model offers",
}


def get_preset(name: str) -> Enlightenments:
    """The named preset (see module docstring); ConfigError listing the names if unknown."""
    if name == "none":
        return Enlightenments()
    if name == "xen-3.4":
        return _xen_34()
    if name == "xen-defaults":
        return parse_xen("defaults")
    if name == "recommended":
        return parse_qemu(RECOMMENDED_FLAGS)
    if name == "linux":
        return parse_qemu(LINUX_FLAGS)
    if name == "all":
        return parse_qemu(ALL_FLAGS)
    raise ConfigError(f"unknown preset {name!r} (choose from: {', '.join(PRESETS)})")


def load_config(hv: str | None = None, xen: str | None = None, libvirt_path: str | None = None,
                preset: str | None = None) -> Enlightenments:
    """Resolve exactly one configuration source into a validated Enlightenments.

    ``hv``: QEMU flags; ``xen``: viridian groups; ``libvirt_path``: a domain XML file; ``preset``: a
    preset name. Zero or several sources, an unreadable file or a bad configuration raise ConfigError.
    """
    given = [flag for flag, v in (("--hv", hv), ("--xen", xen), ("--libvirt", libvirt_path),
                                  ("--preset", preset)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of --hv, --xen, --libvirt, --preset (got: {', '.join(given) or 'none'})")
    if hv is not None:
        return parse_qemu(hv)
    if xen is not None:
        return parse_xen(xen)
    if libvirt_path is not None:
        from viridian.inputs import CONFIG_MAX, read_input

        try:  # a regular file of bounded size (issue 17)
            text = read_input(libvirt_path, "libvirt file", CONFIG_MAX).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read libvirt file {libvirt_path!r}: not UTF-8 text") from None
        return parse_libvirt(text)
    assert preset is not None
    return get_preset(preset)


def resolve(spec: str) -> Enlightenments:
    """Convenience: ``preset:NAME``, ``xen:GROUPS``, ``libvirt:PATH`` or plain QEMU flags."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "preset":
        return load_config(preset=rest)
    if sep and kind == "xen":
        return load_config(xen=rest)
    if sep and kind == "libvirt":
        return load_config(libvirt_path=rest)
    return load_config(hv=spec)
