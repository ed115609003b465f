"""The engine build: the pinned Unicorn version, its identity, the fast paths and the translator buffer.

- The engine patches (store_watch.py, csrc/) were verified on exactly :data:`PINNED`; machine start-up
  (:func:`check_engine`) refuses any other installed version with one line (exit status 2).
- :func:`engine_identity` names the build a record or snapshot was made on (version, libunicorn's sha256, the
  fast paths active); :func:`identity_note` is the one line a replay on another build prints.
- Fast paths with a fallback can be forced off for tests and bug hunts: ``VIRIDIAN_DISABLE=name,name`` (names
  in :data:`FAST_PATHS`; ``all`` for every one). The older switches ``VIRIDIAN_BLOCK_HOOK=1`` and
  ``VIRIDIAN_ACCESS_EXIT_CHECKS=1`` still mean ``block_entry`` and ``quiet_access``.
- :func:`new_uc` creates an engine instance with a translator buffer of :data:`TCG_BUFFER` bytes (Unicorn's
  default reserves 1 GiB of address space per instance) after checking the address space is there, so a
  shortage is one line instead of an exit inside libunicorn.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from functools import cache
from importlib import metadata
from typing import Any

from viridian.errors import UserError

PINNED = "2.1.4"  # the Unicorn release the engine patches were verified on (pyproject.toml pins it too)
DISABLE_ENV = "VIRIDIAN_DISABLE"
FAST_PATHS = {
    "store_watch": "PLT redirects into engine_watch.c (code-store watch, fast stores, PAUSE, translation filter)",
    "block_entry": "blocks start in vn_tb_enter instead of a block hook (csrc/block_entry.c)",
    "quiet_access": "guest loads/stores translated without exit checks (vn_gen_ld/st)",
    "code_filter": "the translator sees only the code hooks of the block's pages (vn_tb_gen_code)",
    "native_tsc": "RDTSC/RDTSCP answered in C (vn_rdtsc)",
    "native_msr": "hot MSR reads answered in C (vn_msr_done: TIME_REF_COUNT, MPERF/APERF)",
    "native_serial": "COM1 LSR reads and THR writes answered in C (vn_in/vn_out)",
    "quiet_ple": "pause-loop exits that change nothing counted in C (vn_pause; quiet_ple.py)",
}
_LEGACY = {"VIRIDIAN_BLOCK_HOOK": "block_entry", "VIRIDIAN_ACCESS_EXIT_CHECKS": "quiet_access"}
# Measured on a Debian 6.1 cloud kernel boot to the initramfs exit (2 vCPUs): each used 12-14 MiB
# of code buffer; a full buffer only makes the engine flush and retranslate, it is never an error.
TCG_BUFFER = 32 << 20
TCG_ENV = "VIRIDIAN_TCG_BUFFER_MIB"


def installed_version() -> str:
    """The installed Unicorn's version (the binding's metadata, else the module's)."""
    try:
        return metadata.version("unicorn")
    except metadata.PackageNotFoundError:
        import unicorn

        return str(getattr(unicorn, "__version__", "unknown"))


def check_engine(version: str | None = None) -> None:
    """Refuse an engine other than the pinned one (one line, exit status 2)."""
    got = installed_version() if version is None else version
    if got != PINNED:
        raise UserError(f"unicorn {got} is installed, but viridian's engine patches are verified on unicorn "
                        f"{PINNED} only: pip install 'unicorn=={PINNED}'")


@cache
def _checked() -> None:
    check_engine()


def disabled() -> frozenset[str]:
    """The fast paths forced off by the environment (unknown names are a user error)."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    if "all" in names:
        names = set(FAST_PATHS)
    unknown = names - set(FAST_PATHS)
    if unknown:
        raise UserError(f"{DISABLE_ENV}: unknown fast path {sorted(unknown)[0]!r} (choose from "
                        f"{', '.join(FAST_PATHS)} or all)")
    for env, name in _LEGACY.items():
        if os.environ.get(env, "0") not in ("", "0"):
            names.add(name)
    return frozenset(names)


def enabled(name: str) -> bool:
    """Whether fast path ``name`` may be used (it still needs the engine to allow it)."""
    return name not in disabled()


def libunicorn_path() -> str:
    from unicorn.unicorn_py3.unicorn import uclib

    return str(uclib._name)


@cache
def libunicorn_sha256() -> str:
    """sha256 of the loaded libunicorn file ("" when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(libunicorn_path(), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def active_fast_paths() -> list[str]:
    """The fast paths this process uses: allowed by the engine build and not forced off."""
    from viridian.machine.unicorn import store_watch

    off = disabled()
    on = []
    if store_watch._installed is None:  # decided on first use: decide now (a scratch engine, no machine)
        from viridian.machine.unicorn.native import library

        store_watch.install(library())
    watch = bool(store_watch._installed) and "store_watch" not in off
    if watch:
        on.append("store_watch")
        if store_watch.TB_ENTRY is not None and "block_entry" not in off:
            on.append("block_entry")
        if store_watch.QUIET_LOADS and "quiet_access" not in off:
            on.append("quiet_access")
        if store_watch.CODE_FILTER and "code_filter" not in off:
            on.append("code_filter")
    on += [n for n in ("native_tsc", "native_msr", "native_serial", "quiet_ple") if n not in off]
    return on


def engine_identity() -> dict[str, Any]:
    """What a record or snapshot names as the build it was made on."""
    return {"unicorn": installed_version(), "libunicorn_sha256": libunicorn_sha256(),
            "fast_paths": active_fast_paths()}


def identity_note(recorded: Any) -> str | None:
    """One line when ``recorded`` (a record's or snapshot's ``engine``) names another build than this one."""
    if not isinstance(recorded, dict):
        return "the record does not name the engine build it was made on"
    now = engine_identity()
    if recorded.get("unicorn") != now["unicorn"] or recorded.get("libunicorn_sha256") != now["libunicorn_sha256"]:
        sha = str(recorded.get("libunicorn_sha256", ""))[:12]
        return (f"recorded on unicorn {recorded.get('unicorn')!s:.20} (libunicorn {sha}), replaying on unicorn "
                f"{now['unicorn']} (libunicorn {now['libunicorn_sha256'][:12]})")
    if recorded.get("fast_paths") != now["fast_paths"]:
        return "recorded with other engine fast paths active (virtual time does not depend on them)"
    return None


def tcg_buffer_size() -> int:
    """Bytes of translator buffer per engine instance (``VIRIDIAN_TCG_BUFFER_MIB`` overrides, 4..1024)."""
    raw = os.environ.get(TCG_ENV)
    if not raw:
        return TCG_BUFFER
    try:
        mib = int(raw)
    except ValueError:
        raise UserError(f"{TCG_ENV}={raw!r}: give a whole number of MiB (4..1024)") from None
    if not 4 <= mib <= 1024:
        raise UserError(f"{TCG_ENV}={mib}: choose 4..1024 MiB")
    return mib << 20


# Besides its code buffer, an engine instance maps ~1 MiB (measured; the probe leaves room for its TLBs and the
# translator's tables); the reservation probe asks for both.
_INSTANCE_EXTRA = 16 << 20


def reserve_check(size: int, what: str) -> None:
    """Refuse with one line when ``size`` bytes (plus an instance's other mappings) of address space cannot
    be mapped -- libunicorn itself would exit the process ("Could not allocate dynamic translator buffer")."""
    try:
        probe = mmap.mmap(-1, size + _INSTANCE_EXTRA, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                          prot=0)  # PROT_NONE: address space only
    except (OSError, ValueError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"cannot reserve {(size + _INSTANCE_EXTRA) >> 20} MiB of address space for {what}'s "
                        f"translator ({reason}; check ulimit -v, or fewer vCPUs / a smaller "
                        f"{TCG_ENV})") from None
    probe.close()


def new_uc(mode: int, what: str = "an engine instance") -> Any:
    """A Unicorn x86 instance whose translator buffer is :func:`tcg_buffer_size` bytes (UC_CTL_TCG_BUFFER_SIZE
    must be set before anything initialises the engine)."""
    from unicorn import UC_ARCH_X86, Uc, UcError

    _checked()
    size = tcg_buffer_size()
    reserve_check(size, what)
    uc: Any = Uc(UC_ARCH_X86, mode)
    try:
        uc.ctl_set_tcg_buffer_size(size)
    except UcError as exc:  # pragma: no cover - the pinned engine supports it
        raise UserError(f"the engine refused a {size >> 20} MiB translator buffer: {exc}") from None
    return uc
