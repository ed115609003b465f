"""Parse Xen ``viridian=`` settings (xl.cfg groups) into a style="xen" Enlightenments.

Accepted forms: a sequence of group strings, or one string ``base,freq``, ``["all", "!freq"]``,
``viridian=[...]``, or a boolean (``1``/``true`` = ``defaults``, ``0``/``false`` = nothing).

Semantics follow xl_parse.c then libxl_x86.c ``hvm_set_viridian_features``: items apply in order,
``name`` enables (and un-disables) a group, ``!name`` disables (and un-enables) it, ``all`` enables every
group, ``defaults`` enables the libxl default set; a group both enabled (by ``all``) and later still
disabled is an error, as is any group without ``base``. The default set is libxl's code (base, freq,
time_ref_count, apic_assist, crash_ctl, no_vp_limit, cpu_hotplug); xl.cfg.5 also lists ``stimer``, which
libxl dropped (Xen commit e83077a3) -- the code wins.

Our extension group: ``guest_idle`` (GUEST_IDLE MSR, 0x40000003 EAX10 + EDX5; Xen lacks it). ``all``
does not include it (it is not a Xen group).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from viridian.config.enlightenments import Enlightenments
from viridian.errors import ConfigError

# libxl_types.idl libxl_viridian_enlightenment, in enum order.
XEN_GROUPS: tuple[str, ...] = (
    "base", "freq", "time_ref_count", "reference_tsc", "hcall_remote_tlb_flush", "apic_assist",
    "crash_ctl", "synic", "stimer", "hcall_ipi", "ex_processor_masks", "no_vp_limit", "cpu_hotplug",
)
EXTENSION_GROUPS: tuple[str, ...] = ("guest_idle",)
# libxl_x86.c hvm_set_viridian_features "Enable defaults" (viridian=1 / "defaults").
DEFAULT_GROUPS: frozenset[str] = frozenset(
    {"base", "freq", "time_ref_count", "apic_assist", "crash_ctl", "no_vp_limit", "cpu_hotplug"})

# Xen viridian.c: version reported in 0x40000002 once a guest OS ID is set ("Windows Server 2008"),
# and the spinlock retry count in 0x40000004.EBX (viridian-spinlock-retry-count, default 2047).
XEN_VERSION = (0x1772, 6, 0)
XEN_SPINLOCK_RETRIES = 2047

_KNOWN = XEN_GROUPS + EXTENSION_GROUPS
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _items(groups: str | Sequence[str]) -> list[str]:
    if not isinstance(groups, str):
        return [g.strip().strip("'\"").strip() for g in groups]
    text = groups.strip()
    if text.startswith("viridian"):
        text = text[len("viridian"):].lstrip().removeprefix("=").strip()
    text = text.strip("[]").strip()
    return [part.strip().strip("'\"").strip() for part in text.split(",")]


def _check_name(name: str) -> str:
    if name not in _KNOWN:
        close = difflib.get_close_matches(name, (*_KNOWN, "defaults", "all"), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown viridian group {name!r}{hint}")
    return name


def resolve_groups(groups: str | Sequence[str]) -> frozenset[str]:
    """The set of enabled groups after xl/libxl processing (see module docstring)."""
    items = [i for i in _items(groups) if i]
    if len(items) == 1 and items[0].lower() in _TRUE | _FALSE:
        return DEFAULT_GROUPS if items[0].lower() in _TRUE else frozenset()
    defaults = False
    enable: set[str] = set()
    disable: set[str] = set()
    for item in items:
        if item == "all":
            enable.update(XEN_GROUPS)
        elif item == "defaults":
            defaults = True
        elif item.startswith("!"):
            name = _check_name(item[1:].strip())
            disable.add(name)
            enable.discard(name)
        else:
            name = _check_name(item)
            enable.add(name)
            disable.discard(name)
    both = sorted(enable & disable)
    if both:
        raise ConfigError(f"viridian group '{both[0]}' both enabled and disabled (libxl)")
    result = (set(DEFAULT_GROUPS) if defaults else set()) | enable
    result -= disable
    if result and "base" not in result:
        raise ConfigError(f"viridian group '{sorted(result)[0]}' requires group 'base' (libxl: base group not enabled)")
    return frozenset(result)


def from_groups(enabled: frozenset[str]) -> Enlightenments:
    """Map resolved Xen groups onto Enlightenments fields (libxl_x86.c group -> HVMPV_* mask)."""
    g = enabled.__contains__
    base = g("base")
    stimer = g("stimer")  # libxl: stimer => HVMPV_time_ref_count | HVMPV_synic | HVMPV_stimer
    return Enlightenments(
        style="xen",
        relaxed=base, vapic=base, vpindex=base,
        frequencies=g("freq"),
        time=g("time_ref_count") or stimer,
        reference_tsc=g("reference_tsc"),
        tlbflush=g("hcall_remote_tlb_flush"),
        apic_assist=g("apic_assist"),
        crash=g("crash_ctl"),
        synic=g("synic") or stimer,
        stimer=stimer,
        ipi=g("hcall_ipi"),
        ex_processor_masks=g("ex_processor_masks"),
        cpu_hotplug=g("cpu_hotplug"),
        guest_idle=g("guest_idle"),
        # viridian.c leaf 5: EAX = -1 only with no_vp_limit, EBX never set
        max_vps=0xFFFFFFFF if g("no_vp_limit") else 0,
        max_lps=0,
        spinlocks=XEN_SPINLOCK_RETRIES,
        version_build=XEN_VERSION[0], version_major=XEN_VERSION[1], version_minor=XEN_VERSION[2],
    )


def parse_xen(groups: str | Sequence[str]) -> Enlightenments:
    """Parse Xen viridian groups (see module docstring); the result is validated and style="xen"."""
    config = from_groups(resolve_groups(groups))
    config.validate()
    return config
