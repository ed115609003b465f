"""Config layer: the Enlightenments value object, its rules, parsers (QEMU hv-*, Xen viridian groups,
libvirt <hyperv>) and presets."""

from viridian.config.enlightenments import Enlightenments
from viridian.config.libvirt import parse_libvirt
from viridian.config.presets import PRESETS, get_preset, load_config, resolve
from viridian.config.qemu import parse_qemu
from viridian.config.xen import parse_xen

__all__ = [
    "PRESETS",
    "Enlightenments",
    "get_preset",
    "load_config",
    "parse_libvirt",
    "parse_qemu",
    "parse_xen",
    "resolve",
]
