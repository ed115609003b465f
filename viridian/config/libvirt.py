"""Parse libvirt ``<hyperv>`` domain XML into Enlightenments (libvirt formatdomain "Hypervisor features").

Accepts a whole ``<domain>`` document, a ``<features>`` element or a bare ``<hyperv>`` fragment.
``mode='custom'`` (the default) enables the listed children; ``mode='passthrough'`` (and the newer
``host-model``, which libvirt expands from the same host data) behaves as QEMU ``hv-passthrough``.
Every child needs ``state='on'|'off'`` (libvirt refuses a missing state); ``spinlocks`` needs
``retries`` >= 4095 when on; ``vendor_id`` needs ``value`` (at most 12 characters). ``stimer`` may hold
``<direct/>``, ``tlbflush`` may hold ``<direct/>`` and ``<extended/>``. In a full ``<domain>``,
``<clock><timer name='hypervclock' present='yes'/>`` gives ``hv-time`` and
``<devices><panic model='hyperv'/>`` gives ``hv-crash``, as libvirt's QEMU driver does.

Our extension: ``<guest_idle state='on'/>``. DOCTYPE and entity declarations are rejected outright.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET

from viridian.config.enlightenments import Enlightenments
from viridian.config.qemu import PASSTHROUGH_FEATURES, PASSTHROUGH_HOST
from viridian.errors import ConfigError

# libvirt <hyperv> child -> Enlightenments field (simple on/off switches).
SWITCHES: dict[str, str] = {
    "relaxed": "relaxed", "vapic": "vapic", "vpindex": "vpindex", "runtime": "runtime", "synic": "synic",
    "stimer": "stimer", "reset": "reset", "frequencies": "frequencies", "reenlightenment": "reenlightenment",
    "tlbflush": "tlbflush", "ipi": "ipi", "evmcs": "evmcs", "avic": "avic", "emsr_bitmap": "emsr_bitmap",
    "xmm_input": "xmm_input", "guest_idle": "guest_idle",
}
VALUED: tuple[str, ...] = ("spinlocks", "vendor_id")
# Sub-elements: (parent, child) -> field.
NESTED: dict[tuple[str, str], str] = {
    ("stimer", "direct"): "stimer_direct",
    ("tlbflush", "direct"): "tlbflush_direct",
    ("tlbflush", "extended"): "tlbflush_ext",
}
MIN_SPINLOCK_RETRIES = 4095  # libvirt: "HyperV spinlock retry count must be at least 4095"


def _state(elem: ET.Element, where: str) -> bool:
    state = elem.get("state")
    if state not in ("on", "off"):
        raise ConfigError(f"libvirt <{where}>: state must be 'on' or 'off', got {state!r}")
    return state == "on"


def _parse_xml(xml_text: str) -> ET.Element:
    upper = xml_text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise ConfigError("libvirt XML: DOCTYPE/ENTITY declarations are not accepted")
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ConfigError(f"malformed libvirt XML: {exc}") from None


def _find_hyperv(root: ET.Element) -> ET.Element | None:
    if root.tag == "hyperv":
        return root
    if root.tag == "features":
        return root.find("hyperv")
    if root.tag == "domain":
        return root.find("features/hyperv")
    raise ConfigError(f"libvirt XML: expected <domain>, <features> or <hyperv>, got <{root.tag}>")


def _children(hyperv: ET.Element, out: dict[str, object]) -> None:
    for child in hyperv:
        tag = child.tag
        if tag in SWITCHES:
            out[SWITCHES[tag]] = _state(child, tag)
            for sub in child:
                field = NESTED.get((tag, sub.tag))
                if field is None:
                    raise ConfigError(f"libvirt <{tag}>: unexpected child <{sub.tag}>")
                out[field] = _state(sub, f"{tag}/{sub.tag}")
        elif tag == "spinlocks":
            if _state(child, tag):
                retries = child.get("retries")
                if retries is None or not retries.strip().isdigit():
                    raise ConfigError(f"libvirt <spinlocks>: retries must be a number, got {retries!r}")
                if int(retries) < MIN_SPINLOCK_RETRIES or int(retries) > 0xFFFFFFFF:
                    raise ConfigError(f"libvirt <spinlocks>: retries must be {MIN_SPINLOCK_RETRIES}..4294967295")
                out["spinlocks"] = int(retries)
        elif tag == "vendor_id":
            if _state(child, tag):
                value = child.get("value")
                if not value or len(value) > 12:
                    raise ConfigError("libvirt <vendor_id>: value must be 1 to 12 characters")
                out["vendor_id"] = value
        else:
            close = difflib.get_close_matches(tag, (*SWITCHES, *VALUED), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown libvirt Hyper-V feature <{tag}>{hint}")


def parse_libvirt(xml_text: str) -> Enlightenments:
    """Parse libvirt domain XML (see module docstring); the result is validated and style="qemu"."""
    root = _parse_xml(xml_text)
    out: dict[str, object] = {}
    hyperv = _find_hyperv(root)
    passthrough = False
    if hyperv is not None:
        mode = hyperv.get("mode", "custom")
        if mode not in ("custom", "passthrough", "host-model"):
            raise ConfigError(f"libvirt <hyperv>: mode must be custom, passthrough or host-model, got {mode!r}")
        passthrough = mode != "custom"
        _children(hyperv, out)
    if root.tag == "domain":
        for timer in root.iterfind("clock/timer"):
            if timer.get("name") == "hypervclock":
                out["time"] = timer.get("present", "yes") == "yes"
        if any(p.get("model") == "hyperv" for p in root.iterfind("devices/panic")):
            out["crash"] = True
    if passthrough:
        out.update(PASSTHROUGH_HOST)
        out.update(dict.fromkeys(PASSTHROUGH_FEATURES, True))
    config = Enlightenments(**out)  # type: ignore[arg-type]
    config.validate()
    return config
