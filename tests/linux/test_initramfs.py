"""The test initramfs (fixtures/initramfs/): the newc writer mkcpio.py, read back by an independent reader, and
Debian's 6.1 cloud kernel running its /init on our Hyper-V partition to the exit port or, with
``viridian.panic``, to a panic reported through the crash MSRs.

The ``test_boot_*`` tests are the slow Linux tests: each boots to user space (~2.1 s of guest time, tens of
seconds wall on one vCPU; ``-k "not test_boot"`` leaves them out). They skip when the kernel cannot be fetched
or the initramfs cannot be built. The rest take well under a second.
"""

from __future__ import annotations

import importlib.util
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.config.presets import load_config
from viridian.machine.linux_boot import load_linux
from viridian.machine.machine import Machine, RunResult

ROOT = Path(__file__).resolve().parents[2]
INITRAMFS_DIR = ROOT / "fixtures" / "initramfs"
CPIO = ROOT / "fixtures" / "build" / "initramfs.cpio"
INIT_BIN = ROOT / "fixtures" / "build" / "obj" / "initramfs" / "init"
BOOT_APPEND = "console=ttyS0 panic=-1 nokaslr"
BOOT_TICKS = 12_000_000_000  # 6 s of guest time: /init starts at ~2.1 s, the workload takes ms


def _load_mkcpio() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkcpio", INITRAMFS_DIR / "mkcpio.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mkcpio"] = mod  # dataclasses resolve the module by name
    spec.loader.exec_module(mod)
    return mod


mkcpio = _load_mkcpio()


# ---- an independent newc reader ----

@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    nlink: int
    rdev: tuple[int, int]
    data: bytes
    ino: int


def read_newc(blob: bytes) -> list[Member]:
    """Every member up to TRAILER!!!; checks magic, alignment, padding and that nothing follows the trailer."""
    out: list[Member] = []
    off = 0
    while True:
        assert off % 4 == 0, off
        hdr = blob[off : off + 110]
        assert hdr[:6] == b"070701", (off, hdr[:6])
        f = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, _uid, _gid, nlink, _mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, check = f
        assert check == 0
        name_end = off + 110 + namesize
        assert blob[name_end - 1] == 0, "name not NUL-terminated"
        name = blob[off + 110 : name_end - 1].decode()
        data_off = (name_end + 3) & ~3
        assert blob[name_end:data_off] == b"\0" * (data_off - name_end)
        data = blob[data_off : data_off + size]
        off = (data_off + size + 3) & ~3
        assert blob[data_off + size : off] == b"\0" * (off - data_off - size)
        if name == "TRAILER!!!":
            assert off == len(blob), "bytes after the trailer"
            return out
        out.append(Member(name, mode, nlink, (rmaj, rmin), data, ino))


def test_initramfs_layout() -> None:
    blob = mkcpio.build_archive(mkcpio.initramfs_entries(b"\x7fELF-init"))
    members = {m.name: m for m in read_newc(blob)}
    assert set(members) == {"dev", "dev/console", "dev/kmsg", "proc", "sys", "init"}
    assert members["init"].mode == stat.S_IFREG | 0o755
    assert members["init"].data == b"\x7fELF-init"
    for node, rdev in (("dev/console", (5, 1)), ("dev/kmsg", (1, 11))):
        assert stat.S_ISCHR(members[node].mode) and members[node].rdev == rdev
    for d in ("dev", "proc", "sys"):
        assert stat.S_ISDIR(members[d].mode) and members[d].nlink == 2
    # a directory precedes what it contains (the kernel creates members in order)
    names = [m.name for m in read_newc(blob)]
    assert names.index("dev") < names.index("dev/console")


def test_rejects_bad_names() -> None:
    for bad in ("", "/init", "TRAILER!!!", "a\0b"):
        with pytest.raises(ValueError):
            mkcpio.build_archive([mkcpio.regular(bad, b"x")])


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0/"), min_size=1, max_size=40)


@settings(max_examples=200)
@given(st.lists(st.tuples(_names, st.binary(max_size=300), st.integers(0, 0o7777)), max_size=12,
                unique_by=lambda t: t[0]))
def test_roundtrip_random_members(files: list[tuple[str, bytes, int]]) -> None:
    files = [f for f in files if f[0] != "TRAILER!!!"]
    entries = [mkcpio.regular(name, data, perm) for name, data, perm in files]
    blob = mkcpio.build_archive(entries)
    assert len(blob) % 4 == 0
    back = read_newc(blob)
    assert [(m.name, m.data, m.mode) for m in back] == [(name, data, stat.S_IFREG | perm) for name, data, perm in files]
    assert [m.ino for m in back] == list(range(1, len(files) + 1))
    assert mkcpio.build_archive(entries) == blob  # deterministic


def test_cli_writes_the_archive(tmp_path: Path) -> None:
    init = tmp_path / "init"
    init.write_bytes(b"#!init")
    extra = tmp_path / "motd"
    extra.write_bytes(b"hello\n")
    out = tmp_path / "rd.cpio"
    assert mkcpio.main([str(init), "-o", str(out), "--add", f"{extra}:/etc/motd:600"]) == 0
    members = {m.name: m for m in read_newc(out.read_bytes())}
    assert members["etc/motd"].data == b"hello\n"
    assert members["etc/motd"].mode == stat.S_IFREG | 0o600


# ---- the built initramfs ----

@pytest.fixture(scope="module")
def initramfs() -> Path:
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures"), "initramfs"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"initramfs not built: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return CPIO


def test_built_init_entry_page_is_present_at_exec(initramfs: Path) -> None:
    """The init starts in its mlockall stub (init.c header): the entry point must lie in the page holding the end
    of the file-backed part of an executable segment that has a .bss (exec's padzero makes that page present)."""
    members = {m.name: m for m in read_newc(initramfs.read_bytes())}
    elf = members["init"].data
    assert elf[:4] == b"\x7fELF" and elf[4] == 2
    entry, phoff = struct.unpack_from("<QQ", elf, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, p_flags, _off, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + i * phentsize)
        if p_type == 1 and vaddr <= entry < vaddr + filesz:
            assert p_flags & 1, "entry segment not executable"
            end = vaddr + filesz
            assert memsz > filesz and end % 4096, "no padzero: the stub's page is not touched by exec"
            assert entry >> 12 == end >> 12, (hex(entry), hex(end))
            return
    pytest.fail("entry point outside every LOAD segment")


def test_init_workload_runs_on_this_host(initramfs: Path) -> None:
    """Not PID 1, the same binary only reads /proc and /sys, runs the workload and exits with its code: a quick
    check of the threads, futexes and mappings outside the emulator (INT 0x80 needs IA32 emulation here)."""
    proc = subprocess.run([str(INIT_BIN)], capture_output=True, text=True, timeout=60)
    if proc.returncode < 0:
        pytest.skip(f"this host cannot run the init (signal {-proc.returncode}; no IA32 emulation?)")
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:]
    assert "viridian-init: online cpus: " in out
    done = [ln for ln in out.splitlines() if "viridian-init: workload done" in ln]
    assert done and done[0].endswith(" ok"), out[-2000:]
    assert out.rstrip().endswith("viridian-init: exit 0 (not PID 1: no power-off)")


# ---- guest level: Debian's kernel runs /init ----

def boot(kernel: str, initrd: Path, append: str, vcpus: int = 1) -> tuple[RunResult, str]:
    m = Machine(load_config(preset="recommended"), load_linux(kernel, initrd), vcpus=vcpus, mem_mib=256,
                max_ticks=BOOT_TICKS, cmdline=append)
    result = m.run()
    return result, m.ports.serial.text()


def init_lines(log: str) -> dict[str, str]:
    """The init's "viridian-init: LABEL: VALUE" lines (the last of each label)."""
    out: dict[str, str] = {}
    for line in log.splitlines():
        _, tag, rest = line.partition("viridian-init: ")
        if tag:
            label, _, value = rest.partition(": ")
            out[label] = value
    return out


def test_boot_debian_init_to_exit_port(kernel: str, initramfs: Path) -> None:
    result, log = boot(kernel, initramfs, BOOT_APPEND + " viridian.iters=20")
    assert "Run /init as init process" in log, log[-3000:]
    assert result.status == "exit" and result.code == 0, (result, log[-4000:])
    lines = init_lines(log)
    assert lines["current_clocksource"] == "hyperv_clocksource_tsc_page", lines
    assert "hyperv_clocksource_tsc_page" in lines["available_clocksource"]
    assert "hypervisor=yes" in lines["cpu flags"]
    assert "online cpus" in lines and lines["online cpus"].startswith("1 ")
    assert "viridian-init: klog: Hypervisor detected: Microsoft Hyper-V" in log
    assert "viridian-init: klog: Hyper-V: Using hypercall for remote TLB flush" in log
    assert lines["clockevent0 current_device"] == "Hyper-V clockevent", lines
    done = [ln for ln in log.splitlines() if "viridian-init: workload done" in ln]
    assert done and done[0].endswith(" ok") and "mutex=160 " in done[0], done
    assert log.rstrip().endswith("viridian-init: exit 0"), log[-500:]


def test_boot_debian_init_panic_reports_crash(kernel: str, initramfs: Path) -> None:
    result, log = boot(kernel, initramfs, BOOT_APPEND + " viridian.iters=0 viridian.panic")
    assert "viridian-init: panic via /proc/sysrq-trigger 'c'" in log, log[-3000:]
    assert result.status == "crash", (result, log[-3000:])
    assert "Kernel panic - not syncing: sysrq triggered crash" in result.detail, result
