"""Parse QEMU ``-cpu`` Hyper-V flags (``hv-relaxed,hv-spinlocks=0x1fff,...``) into Enlightenments.

Syntax follows QEMU's cpu option parsing: comma-separated ``name``, ``name=value``, ``+name``/``-name``;
``,,`` is a literal comma inside a value; ``hv_x`` is accepted for ``hv-x`` (legacy spelling). Booleans
take on/off/true/false/yes/no. Only ``hv-*`` and ``x-hv-*`` tokens are interpreted: any other token
(a leading CPU model such as ``host`` or ``qemu64``, ``+x2apic``, ``kvm=off``) is skipped silently so a
whole QEMU ``-cpu`` argument can be pasted. An unknown ``hv-*`` flag is a ConfigError with close matches.

Our extensions (QEMU lacks them): ``hv-guest-idle`` (GUEST_IDLE MSR) and ``x-hv-max-lps``
(0x40000005.EBX). ``hv-enforce-cpuid`` is accepted and ignored: the model always gates like KVM's
enforce_cpuid. ``hv-syndbg`` is refused: the synthetic debugger is not modelled.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from viridian.config.enlightenments import FEATURES, Enlightenments
from viridian.config.rules import VERSION_BITS, flag_name
from viridian.errors import ConfigError

# hv-passthrough (kvm.c kvm_hyperv_expand_features) copies identification from the host's
# KVM_GET_SUPPORTED_HV_CPUID. Our reference host is a stock KVM (arch/x86/kvm/hyperv.c kvm_get_hv_cpuid)
# with nested VMX + eVMCS: vendor "Linux KVM Hv", version 0x3839/10.0, spinlocks 0xFFF ("matches Hyper-V
# 2016"), 0x40000005 = KVM_MAX_VCPUS (1024, x86 default config) / 64. Every feature with a QEMU flag is
# supported; hv-syndbg is skipped (skip_passthrough) and our hv-guest-idle is left as given.
PASSTHROUGH_HOST: dict[str, object] = {
    "vendor_id": "Linux KVM Hv", "spinlocks": 0xFFF, "max_vps": 1024, "max_lps": 64,
    "version_build": 0x3839, "version_major": 0xA, "version_minor": 0, "version_spack": 0,
    "version_sbranch": 0, "version_snumber": 0,
}
PASSTHROUGH_FEATURES: tuple[str, ...] = tuple(f for f in FEATURES if f != "guest_idle")

_TRUE = frozenset({"on", "true", "yes", "y"})
_FALSE = frozenset({"off", "false", "no", "n"})


def _bool(flag: str, value: str | None) -> bool:
    if value is None:
        return True
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{flag}: expected on or off, got {value!r}")


def parse_int(flag: str, value: str | None, bits: int, *, signed_ok: bool = False) -> int:
    """An integer like QEMU's qemu_strtou64 base 0 (0x.. hex, 0.. octal, decimal), range-checked."""
    if value is None or not value.strip():
        raise ConfigError(f"{flag} needs a value, e.g. {flag}=0x1fff")
    text = value.strip().lower().replace("_", "")
    try:
        if text.startswith(("0x", "-0x")):
            number = int(text, 16)
        elif len(text.lstrip("-")) > 1 and text.lstrip("-").startswith("0"):
            number = int(text, 8)
        else:
            number = int(text, 10)
    except ValueError:
        raise ConfigError(f"{flag}: expected an integer, got {value!r}") from None
    if signed_ok and -(1 << (bits - 1)) <= number < 0:
        number &= (1 << bits) - 1
    if not 0 <= number < (1 << bits):
        raise ConfigError(f"{flag}: {value!r} does not fit in {bits} bits")
    return number


def _coresharing(flag: str, value: str | None) -> str:
    low = (value or "").strip().lower()
    if low not in ("on", "off", "auto"):
        raise ConfigError(f"{flag}: expected on, off or auto, got {value!r}")
    return low


def _vendor(flag: str, value: str | None) -> str:
    if value is None:
        raise ConfigError(f"{flag} needs a value, e.g. {flag}=Microsoft Hv")
    return value


Setter = Callable[[dict[str, object], str, str | None], None]


def _set_bool(field: str) -> Setter:
    def setter(out: dict[str, object], flag: str, value: str | None) -> None:
        out[field] = _bool(flag, value)
    return setter


def _set_int(field: str, bits: int, *, signed_ok: bool = False) -> Setter:
    def setter(out: dict[str, object], flag: str, value: str | None) -> None:
        out[field] = parse_int(flag, value, bits, signed_ok=signed_ok)
    return setter


def _set_with(field: str, convert: Callable[[str, str | None], object]) -> Setter:
    def setter(out: dict[str, object], flag: str, value: str | None) -> None:
        out[field] = convert(flag, value)
    return setter


def _ignore(out: dict[str, object], flag: str, value: str | None) -> None:
    _bool(flag, value)  # still reject garbage values


def _syndbg(out: dict[str, object], flag: str, value: str | None) -> None:
    if _bool(flag, value):
        raise ConfigError("hv-syndbg: the synthetic kernel debugger is not modelled")


def _build_table() -> dict[str, Setter]:
    table: dict[str, Setter] = {flag_name(f): _set_bool(f) for f in FEATURES}
    table["hv-apicv"] = _set_bool("avic")  # cpu.c alias of hv-avic
    table["hv-spinlocks"] = _set_int("spinlocks", 32)
    table["hv-no-nonarch-coresharing"] = _set_with("no_nonarch_coresharing", _coresharing)
    table["hv-vendor-id"] = _set_with("vendor_id", _vendor)
    for part, bits in VERSION_BITS.items():
        table[f"hv-version-id-{part}"] = _set_int(f"version_{part}", bits)
    table["x-hv-max-vps"] = _set_int("max_vps", 32, signed_ok=True)  # cpu.c INT32, default -1
    table["x-hv-max-lps"] = _set_int("max_lps", 32)  # ours: 0x40000005.EBX
    table["hv-passthrough"] = _set_with("_passthrough", _bool)
    table["hv-enforce-cpuid"] = _ignore
    table["hv-syndbg"] = _syndbg
    return table


FLAGS: dict[str, Setter] = _build_table()


def split_flags(flags: str) -> list[str]:
    """Split on commas, honouring QEMU's ``,,`` escape for a literal comma."""
    tokens: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(flags):
        ch = flags[i]
        if ch == "," and flags[i + 1:i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            tokens.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    tokens.append("".join(current))
    return [t for t in (tok.strip() for tok in tokens) if t]


def _normalise(name: str) -> str:
    if name.startswith(("hv_", "x_hv_")) or name.startswith("x-hv_"):
        return name.replace("_", "-")
    return name


def _unknown(flag: str) -> ConfigError:
    close = difflib.get_close_matches(flag, FLAGS, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown Hyper-V flag {flag!r}{hint}")


def parse_qemu(flags: str) -> Enlightenments:
    """Parse a QEMU ``-cpu`` flag string (see module docstring); the result is validated."""
    out: dict[str, object] = {}
    for token in split_flags(flags):
        value: str | None
        if token[0] in "+-" and "=" not in token:
            name, value = token[1:].strip(), ("on" if token[0] == "+" else "off")
        elif "=" in token:
            name, _, value = token.partition("=")
            name = name.strip()
        else:
            name, value = token, None
        name = _normalise(name)
        if not name.startswith(("hv-", "x-hv-")):
            continue  # CPU model or a non-Hyper-V feature
        setter = FLAGS.get(name)
        if setter is None:
            raise _unknown(name)
        setter(out, name, value)
    passthrough = bool(out.pop("_passthrough", False))
    if passthrough:
        # "hv-passthrough overrides all other 'hv-' settings" (QEMU docs/system/i386/hyperv.rst)
        out.update(PASSTHROUGH_HOST)
        out.update(dict.fromkeys(PASSTHROUGH_FEATURES, True))
    config = Enlightenments(**out)  # type: ignore[arg-type]
    config.validate()
    return config
