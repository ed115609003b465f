"""Build and load the vCPU hot path written in C (csrc/: vcpu_native.c hooks, engine_watch.c, vn_state.h).

A wheel carries the library compiled at build time (``_native/``, setup.py); otherwise it is compiled once
per source version with the system C compiler (``$CC`` may carry flags) into the user cache
(``$XDG_CACHE_HOME/viridian`` or ``~/.cache/viridian``; ``VIRIDIAN_CACHE`` overrides) and loaded with
ctypes. It links against nothing: Unicorn's entry points are handed to it as function pointers.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from viridian.errors import UserError

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "vcpu_native.c", CSRC / "engine_watch.c", CSRC / "block_entry.c")
HEADERS = (CSRC / "vn_state.h",)
TABLE_PAGES = 1 << 16  # capacity of the scanned-page set per vCPU (75 % usable)

STOP_NONE, STOP_BUDGET, STOP_NEW_SITES, STOP_TABLE_FULL, STOP_PAUSE, STOP_WINDOW = range(6)


MSR_REFERENCE, MSR_TSC_OFFSET = 1, 2  # NativeMsr.kind (vn_state.h)


class NativeMsr(ctypes.Structure):
    """One RDMSR answered in C (vn_msr_done): index, kind, offset, reads since collected."""

    _fields_ = [("index", ctypes.c_uint64), ("kind", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("reads", ctypes.c_uint64)]


class VnState(ctypes.Structure):
    """Mirror of ``vn_state`` in csrc/vn_state.h (keep the field order identical)."""

    _fields_ = [
        ("bytes", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("hot", ctypes.c_uint64),
        ("block_start", ctypes.c_uint64),
        ("last_ran_end", ctypes.c_uint64),
        ("pend_end", ctypes.c_uint64),
        ("pend_valid", ctypes.c_uint64),
        ("exit_request", ctypes.c_void_p),
        ("pending_site", ctypes.c_uint64),
        ("stop_reason", ctypes.c_uint64),
        ("new_page", ctypes.c_uint64),
        ("pages_scanned", ctypes.c_uint64),
        ("last_page", ctypes.c_uint64),
        ("stop", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("table", ctypes.POINTER(ctypes.c_uint64)),
        ("table_mask", ctypes.c_uint64),
        ("table_used", ctypes.c_uint64),
        ("rip_reg", ctypes.c_int),
        ("prot_read", ctypes.c_int),
        ("pauses", ctypes.c_uint64),
        ("ple_gap", ctypes.c_uint64),
        ("ple_window", ctypes.c_uint64),
        ("pause_last", ctypes.c_uint64),
        ("pause_loop_start", ctypes.c_uint64),
        ("new_code", ctypes.c_uint64 * 1024),
        ("new_code_count", ctypes.c_uint64),
        ("dirty_code", ctypes.c_uint64 * 64),
        ("dirty_count", ctypes.c_uint64),
        ("reg_read", ctypes.c_void_p),
        ("fast_spin_ok", ctypes.c_uint64),
        ("fast_spin_count", ctypes.c_uint64),
        ("fast_done_at", ctypes.c_uint64),
        ("exit_ticks", ctypes.c_uint64),
        ("rcx_reg", ctypes.c_int),
        ("rax_reg", ctypes.c_int),
        ("cs_reg", ctypes.c_int),
        ("rflags_reg", ctypes.c_int),
        ("window_shadow", ctypes.c_uint64),
        ("window_open_at", ctypes.c_uint64),
        ("stub_count", ctypes.c_uint64),
        ("stub_at", ctypes.c_uint64 * 8),
        ("window_active", ctypes.c_uint64),
        ("window_first", ctypes.c_uint64),
        ("window_prev_if", ctypes.c_uint64),
        ("code_map", ctypes.POINTER(ctypes.c_uint64)),
        ("code_map_pages", ctypes.c_uint64),
        ("vmem_translate", ctypes.c_void_p),
        ("new_code_pa", ctypes.c_uint64 * 1024),
        ("code_writes", ctypes.c_uint64),
        ("defer_map", ctypes.POINTER(ctypes.c_uint64)),
        ("ram_count", ctypes.c_uint64),
        ("ram_ranges", (ctypes.c_uint64 * 4) * 16),
        ("tsc_base", ctypes.c_uint64),
        ("tsc_floor", ctypes.c_uint64),
        ("tsc_offset", ctypes.c_uint64),
        ("rdtsc_count", ctypes.c_uint64),
        ("rdx_reg", ctypes.c_int),
        ("tb_map", ctypes.POINTER(ctypes.c_uint64)),
        ("host_ram", ctypes.c_uint64),
        ("cpu", ctypes.c_void_p),
        ("fast_fills", ctypes.c_uint64),
        ("rearms", ctypes.c_uint64),
        ("cr0_reg", ctypes.c_int),
        ("cr3_reg", ctypes.c_int),
        ("cr4_reg", ctypes.c_int),
        ("walk_pad", ctypes.c_int),
        ("engine_reads", ctypes.c_uint64),
        ("uc", ctypes.c_void_p),
        ("filtered_tbs", ctypes.c_uint64),
        ("pause_native", ctypes.c_uint64),
        ("tb_patch", ctypes.c_uint64),
        ("tb_patched", ctypes.c_uint64),
        ("tb_patch_failed", ctypes.c_uint64),
        ("tb_back", ctypes.c_uint64),
        ("io_in_slow", ctypes.c_void_p),
        ("io_out_slow", ctypes.c_void_p),
        ("com1_base", ctypes.c_uint64),
        ("thr_native", ctypes.c_uint64),
        ("lsr_reads", ctypes.c_uint64),
        ("io_last", ctypes.c_uint64),
        ("serial_len", ctypes.c_uint64),
        ("serial_buf", ctypes.c_uint8 * 4096),
        ("msr_slow", ctypes.c_void_p),
        ("pending_len", ctypes.c_uint64),
        ("native_msr_count", ctypes.c_uint64),
        ("ref_scale", ctypes.c_uint64),
        ("ref_offset", ctypes.c_uint64),
        ("native_reads", ctypes.c_uint64),
        ("msr_reg", ctypes.c_int),
        ("msr_pad", ctypes.c_int),
        ("quiet_accesses", ctypes.c_uint64),
        ("wp_map", ctypes.POINTER(ctypes.c_uint64)),
        ("wp_fault", ctypes.c_uint64),
        ("native_msrs", NativeMsr * 4),
        ("hix", ctypes.c_void_p),
        ("hix_n", ctypes.c_uint64),
        ("hix_cap", ctypes.c_uint64),
        ("hix_span", ctypes.c_uint64),
        ("hix_rebuilds", ctypes.c_uint64),
        ("hix_head", ctypes.c_void_p),
        ("hix_tail", ctypes.c_void_p),
        ("ple_quiet", ctypes.c_uint64),
        ("ple_exits", ctypes.c_uint64),
        ("spin_control", ctypes.c_uint64),
        ("lsr_idle", ctypes.c_uint64),
        ("stub_len", ctypes.c_uint64),
        ("stub_sig", ctypes.c_uint8 * 16),
        ("exact", ctypes.c_uint64),
    ]


def model_constants(n: VnState) -> None:
    """The constants the C fast paths compare with or answer, taken from the model when an engine is built --
    one source of truth: the fast NotifyLongSpinWait input value (TLFS §3.7 control word, code 0x0008 with the
    fast bit), COM1's LSR while it transmits instantly (the 16550 model) and the start of our hypercall page
    (stubs.py, through the hook's instruction). TIME_REF_COUNT's scale and offset and the exit cost are set
    the same way (vcpu_traps.refresh_native_msrs, vcpu.py)."""
    from viridian.abi.control import HypercallControl
    from viridian.devices.uart16550 import LSR_TEMT, LSR_THRE
    from viridian.machine.stubs import HYPERCALL_HOOK_OFFSET, STUB64
    from viridian.tlfs.hypercalls import HvCall

    n.spin_control = HypercallControl(code=int(HvCall.NOTIFY_LONG_SPIN_WAIT), fast=True).encode()
    n.lsr_idle = LSR_THRE | LSR_TEMT
    sig = STUB64[:HYPERCALL_HOOK_OFFSET + 4]  # mov rax, -1; nop dword [rax] (the hook's address)
    n.stub_len = len(sig)
    n.stub_sig[:len(sig)] = list(sig)


def _cache_dir() -> Path:
    root = os.environ.get("VIRIDIAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "viridian")
    return Path(root)


LAYOUT_FIELDS = ("bytes", "exit_request", "table", "new_code", "ram_ranges", "tb_map", "serial_buf", "msr_slow",
                 "native_msrs", "hix_tail", "ple_exits", "stub_sig")  # vcpu_native.c vn_layout(1...), in order


def check_layout(lib: ctypes.CDLL) -> None:
    """VnState must mirror vn_state exactly (the hooks and Python share the memory)."""
    lib.vn_layout.argtypes, lib.vn_layout.restype = [ctypes.c_int], ctypes.c_int64
    want = [ctypes.sizeof(VnState)] + [getattr(getattr(VnState, f, None), "offset", -1) for f in LAYOUT_FIELDS]
    got = [lib.vn_layout(i) for i in range(len(want))]
    if got != want or lib.vn_layout(len(want)) != -1:
        raise RuntimeError(f"native.VnState does not mirror csrc/vn_state.h (size and offsets {want} != {got})")


PREBUILT = Path(__file__).with_name("_native")  # a wheel's copy, compiled when the wheel was built (setup.py)


def library_name() -> str:
    """File name of the library for the current sources (their digest: a stale build is never loaded)."""
    src = b"".join(p.read_bytes() for p in SOURCES + HEADERS)
    return f"vcpu_native-{hashlib.sha256(src).hexdigest()[:16]}.so"


def compile_library(out: Path, cc: str | None = None) -> None:
    """Compile csrc/ into the shared library ``out``; UserError (one line) when the compiler is missing or fails.
    ``cc`` (default $CC, else gcc/cc) may carry flags ("gcc -m64")."""
    cc = cc or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise UserError("no C compiler found: viridian needs gcc (or set CC) to build its vCPU hot path")
    try:
        words = shlex.split(cc)
    except ValueError:
        words = []
    if not words:
        raise UserError(f"CC={cc!r} is not a compiler command")
    try:
        proc = subprocess.run([*words, "-O2", "-shared", "-fPIC", "-o", str(out), *map(str, SOURCES)],
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        raise UserError(f"cannot run the C compiler {cc!r} ({exc.strerror}): install gcc or set CC") from None
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), None) or \
            (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise UserError(f"building the vCPU hot path with {cc!r} failed: {first.strip()}")


def _built_library() -> Path:
    """The library for these sources: the wheel's prebuilt copy, else the user cache (compiled once)."""
    name = library_name()
    if (PREBUILT / name).is_file():
        return PREBUILT / name
    target = _cache_dir() / name
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / name
            compile_library(out)
            os.replace(out, target)
    except OSError as exc:
        raise UserError(f"cannot write the vCPU hot-path library to {target.parent} ({exc.strerror}): set "
                        "VIRIDIAN_CACHE to a writable directory") from None
    return target


@cache
def library() -> ctypes.CDLL:
    """The compiled hot-path library (the wheel's, or built on first use)."""
    target = _built_library()
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise UserError(f"cannot load the vCPU hot-path library {target}: {exc}") from None
    check_layout(lib)
    lib.vn_remove.argtypes = [ctypes.POINTER(VnState), ctypes.c_uint64]
    lib.vn_remove.restype = None
    for name in ("vn_contains", "vn_insert"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(VnState), ctypes.c_uint64]
        fn.restype = ctypes.c_int
    lib.vn_after_sti.argtypes = [ctypes.c_void_p, ctypes.POINTER(VnState)]
    lib.vn_after_sti.restype = ctypes.c_int
    lib.vn_clear.argtypes = [ctypes.POINTER(VnState)]
    lib.vn_clear.restype = None
    lib.vn_register.argtypes = [ctypes.c_void_p, ctypes.POINTER(VnState)]
    lib.vn_register.restype = ctypes.c_int
    lib.vn_unregister.argtypes = [ctypes.c_void_p]
    lib.vn_unregister.restype = None
    lib.vn_set_real_tbipf.argtypes = [ctypes.c_void_p]
    lib.vn_set_real_tbipf.restype = None
    lib.vn_set_engine_fns.argtypes = [ctypes.c_void_p] * 4
    lib.vn_set_engine_fns.restype = None
    lib.vn_set_real_svm_check.argtypes = [ctypes.c_void_p]
    lib.vn_set_real_svm_check.restype = None
    lib.vn_set_code_filter.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
    lib.vn_set_code_filter.restype = None
    lib.vn_set_tb_entry.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    lib.vn_set_tb_entry.restype = None
    lib.vn_enter.argtypes = [ctypes.POINTER(VnState)]
    lib.vn_enter.restype = None
    lib.vn_leave.argtypes = []
    lib.vn_leave.restype = None
    return lib


def function_address(lib: ctypes.CDLL, name: str) -> int:
    value = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    assert value is not None
    return value
