"""One string names an offer (``viridian compare --a``, ``viridian measure`` configurations): a preset,
``hv:FLAGS`` (or a bare ``hv-...`` list), ``xen:GROUPS`` or ``libvirt:FILE``, then optional ``@EDIT`` CPUID
edits (viridian.config.cpuid_edits)."""

from __future__ import annotations

from viridian.config.cpuid_edits import parse_edit
from viridian.config.enlightenments import Enlightenments
from viridian.config.presets import PRESETS, load_config
from viridian.errors import UserError

CONFIG_HELP = (f"a preset ({', '.join(PRESETS)}), hv:FLAGS (QEMU hv-* flags; a bare 'hv-...' list works too), "
               "xen:GROUPS, or libvirt:FILE.xml; append @LEAF.REG+BITS (or -BITS, =VALUE) to edit a CPUID leaf, "
               "e.g. recommended@0x40000003.eax-0x10")


def parse_config(spec: str) -> Enlightenments:
    base, *edits = spec.split("@")
    config = _parse_base(base)
    return config.replace(cpuid_edits=tuple(parse_edit(e) for e in edits)) if edits else config


def _parse_base(spec: str) -> Enlightenments:
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("hv", "xen", "libvirt"):
        return load_config(**{{"hv": "hv", "xen": "xen", "libvirt": "libvirt_path"}[kind]: rest})
    if spec.startswith("hv-"):
        return load_config(hv=spec)
    if spec in PRESETS:
        return load_config(preset=spec)
    raise UserError(f"offer {spec!r}: use {CONFIG_HELP}")


def offer_cli_args(spec: str) -> list[str]:
    """The ``viridian run`` options that select the same offer as ``spec`` (for printed commands)."""
    base, *edits = spec.split("@")
    kind, sep, rest = base.partition(":")
    if sep and kind in ("hv", "xen", "libvirt"):
        out = [f"--{kind}", rest]
    elif base.startswith("hv-"):
        out = ["--hv", base]
    else:
        out = ["--preset", base]
    for edit in edits:
        out += ["--cpuid", edit]
    return out
