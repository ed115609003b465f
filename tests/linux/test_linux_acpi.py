"""ACPI tables of a Linux boot (engine-free part): RSDP -> XSDT -> FADT (HW-reduced, revision 6) -> DSDT (\\_S5_)
and MADT, every checksum, every field Linux reads; the AML encoder; the Sleep Control/Status device; an S5
request from guest code ends the run with status "exit" code 0 (the exit port's path)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.config.presets import get_preset
from viridian.devices.acpi_sleep import CONTROL_PORT, S5_SLP_TYP, SLP_EN, STATUS_PORT, WAK_STS, AcpiSleep
from viridian.devices.cmos import CENTURY
from viridian.machine import layout as L
from viridian.machine.acpi import build_acpi
from viridian.machine.linux_acpi import (
    F_HW_REDUCED_ACPI,
    FADT_FLAGS,
    aml_integer,
    aml_package,
    aml_pkg_length,
)
from viridian.machine.linux_boot import BIOS_AREA
from viridian.machine.machine import Machine, RunResult


def _table(ram: memoryview, addr: int) -> bytes:
    length, = struct.unpack_from("<I", ram, addr + 4)
    return bytes(ram[addr : addr + length])


def _tables(vcpus: int = 2) -> tuple[memoryview, dict[bytes, tuple[int, bytes]]]:
    ram = memoryview(bytearray(0x100000))
    rsdp = build_acpi(ram, BIOS_AREA, vcpus)
    r = bytes(ram[rsdp : rsdp + 36])
    xsdt_addr, = struct.unpack_from("<Q", r, 24)
    xsdt = _table(ram, xsdt_addr)
    found = {b"XSDT": (xsdt_addr, xsdt)}
    for i in range((len(xsdt) - 36) // 8):
        addr, = struct.unpack_from("<Q", xsdt, 36 + 8 * i)
        found[bytes(ram[addr : addr + 4])] = (addr, _table(ram, addr))
    fadt = found[b"FACP"][1]
    dsdt_addr, = struct.unpack_from("<Q", fadt, 140)
    found[b"DSDT"] = (dsdt_addr, _table(ram, dsdt_addr))
    return ram, found


def _pkg_length(data: bytes, at: int) -> tuple[int, int]:
    """Decode a §20.2.4 PkgLength at ``at``: (length, bytes it occupies)."""
    lead = data[at]
    extra = lead >> 6
    if extra == 0:
        return lead & 0x3F, 1
    n = lead & 0xF
    for i in range(extra):
        n |= data[at + 1 + i] << (4 + 8 * i)
    return n, 1 + extra


@pytest.mark.parametrize("vcpus", [1, 2, 255])
def test_every_table_checksums_and_fits_the_bios_area(vcpus: int) -> None:
    _, tables = _tables(vcpus)
    assert set(tables) == {b"XSDT", b"FACP", b"APIC", b"DSDT"}
    spans = []
    for sig, (addr, t) in tables.items():
        assert sum(t) & 0xFF == 0, sig
        assert addr % 16 == 0 and addr >= BIOS_AREA + 36 and addr + len(t) <= 0x100000, sig
        spans.append((addr, addr + len(t)))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans  # no overlap


def test_fadt_is_hw_reduced_revision_6() -> None:
    _, tables = _tables()
    dsdt_addr = tables[b"DSDT"][0]
    f = tables[b"FACP"][1]
    assert len(f) == 276 and f[8] == 6 and f[131] == 5  # ACPI 6.5 FADT
    flags, = struct.unpack_from("<I", f, 112)
    assert flags == FADT_FLAGS and flags & F_HW_REDUCED_ACPI
    facs, dsdt32 = struct.unpack_from("<II", f, 36)
    x_facs, x_dsdt = struct.unpack_from("<QQ", f, 132)
    assert (facs, dsdt32, x_facs) == (0, 0, 0) and x_dsdt == dsdt_addr  # no FACS; X_DSDT only
    sci, smi_cmd = struct.unpack_from("<HI", f, 46)
    assert sci == 0 and smi_cmd == 0 and f[52:56] == bytes(4)  # no SCI, no SMI_CMD/ACPI_ENABLE/DISABLE
    assert f[56:96] == bytes(40)  # no PM1a/b event/control, PM2, PM timer, GPE blocks or lengths
    assert f[148:244] == bytes(96)  # nor their X_ forms
    assert struct.unpack_from("<HH", f, 96) == (101, 1001)  # no C2, no C3
    assert f[108] == CENTURY == 0x32  # viridian.devices.cmos keeps the century there
    boot_arch, = struct.unpack_from("<H", f, 109)
    assert not boot_arch & (1 << 1)  # no 8042
    assert not boot_arch & (1 << 5)  # the CMOS RTC is present
    assert boot_arch & (1 << 2) and boot_arch & (1 << 3)  # no VGA, no MSI
    assert f[116:129] == bytes(13)  # no reset register
    for off, port in ((244, CONTROL_PORT), (256, STATUS_PORT)):
        assert struct.unpack_from("<BBBBQ", f, off) == (1, 8, 0, 1, port)  # I/O, 8 bits, byte access


def test_dsdt_defines_s5() -> None:
    _, tables = _tables()
    d = tables[b"DSDT"][1]
    assert d[8] == 2  # 64-bit AML integers
    aml = d[36:]
    assert aml[0] == 0x08 and aml[1:5] == b"_S5_" and aml[5] == 0x12  # Name(_S5_, Package...)
    length, used = _pkg_length(aml, 6)
    assert 6 + length == len(aml)  # the package is the whole definition block
    body = aml[6 + used :]
    assert body[0] == 4 and body[1:] == bytes([0x0A, S5_SLP_TYP, 0, 0, 0])


@given(st.integers(0, (1 << 28) - 5))
def test_pkg_length_round_trips(n: int) -> None:
    enc = aml_pkg_length(n)
    assert _pkg_length(enc, 0) == (n + len(enc), len(enc))


def test_aml_constants() -> None:
    assert aml_integer(0) == b"\x00" and aml_integer(1) == b"\x01" and aml_integer(5) == b"\x0a\x05"
    assert aml_package() == b"\x12\x02\x00"
    with pytest.raises(ValueError):
        aml_integer(0x100)


def test_sleep_device_registers() -> None:
    calls: list[int] = []
    dev = AcpiSleep(lambda: calls.append(1))
    dev.write(STATUS_PORT, 1, WAK_STS)  # OSPM clears WAK_STS first
    assert dev.read(STATUS_PORT, 1) == 0
    dev.write(CONTROL_PORT, 1, S5_SLP_TYP << 2)  # type without SLP_EN: no transition
    assert calls == [] and dev.read(CONTROL_PORT, 1) == S5_SLP_TYP << 2  # SLP_EN reads 0
    dev.write(CONTROL_PORT, 1, 1 << 2 | SLP_EN)  # S1: not a state this platform has
    assert calls == [] and dev.ignored == 1
    dev.write(CONTROL_PORT, 1, S5_SLP_TYP << 2 | SLP_EN)
    assert calls == [1]


def _flat_machine(code: bytes) -> Machine:
    from viridian.machine.linux_machine import attach_acpi_sleep
    from viridian.machine.loader import Image, Segment

    image = Image("acpi-s5", "flat", L.FLAT_LOAD, (Segment(L.FLAT_LOAD, code, len(code)),))
    m = Machine(get_preset("none"), image, vcpus=1, mem_mib=16, max_ticks=50_000_000)
    attach_acpi_sleep(m)
    return m


def _out(port: int, value: int) -> bytes:
    return b"\x66\xba" + struct.pack("<H", port) + bytes([0xB0, value, 0xEE])  # mov dx, port; mov al, v; out


EXIT_7 = bytes([0xB0, 7, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE])  # out 0xF4, 7; hlt; jmp $


def test_guest_s5_request_exits_0() -> None:
    m = _flat_machine(_out(STATUS_PORT, WAK_STS) + _out(CONTROL_PORT, S5_SLP_TYP << 2 | SLP_EN) + EXIT_7)
    result = m.run()
    assert (result.status, result.code) == ("exit", 0)


def test_guest_s1_request_does_nothing() -> None:
    m = _flat_machine(_out(CONTROL_PORT, 1 << 2 | SLP_EN) + EXIT_7)
    result = m.run()
    assert (result.status, result.code) == ("exit", 7)


# ---- Debian's 6.1 cloud kernel: ACPI enables cleanly, and its power-off reaches the Sleep Control register ----

INIT_C = r"""
static volatile char bss[64];  /* a bss tail in the code's page: exec's padzero makes that page present */
void _start(void) {
    /* The i386 ABI through INT 0x80 (SYSCALL is a no-op on this machine today) and mlockall first (user page
       faults are not delivered correctly yet): fixtures/initramfs/README.md "Platform work-arounds".
       mlockall(MCL_CURRENT | MCL_FUTURE), then reboot(MAGIC1, MAGIC2, LINUX_REBOOT_CMD_POWER_OFF). */
    __asm__ volatile("int $0x80" :: "a"(152), "b"(3) : "memory");
    bss[0] = 1;
    __asm__ volatile("int $0x80" :: "a"(88), "b"(0xfee1dead), "c"(672274793), "d"(0x4321fedc) : "memory");
    for (;;) __asm__ volatile("pause");
}
"""
BOOT_TICKS = 8_000_000_000  # 4 s of guest time: /init runs at ~2.1 s


def _newc(name: str, mode: int, data: bytes = b"") -> bytes:
    """One member of a newc cpio archive (the initramfs format, Documentation/driver-api/early-userspace)."""
    n = name.encode() + b"\0"
    fields = (1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0)
    out = b"070701" + "".join(f"{v:08X}" for v in fields).encode() + n
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


@pytest.fixture(scope="module")
def poweroff_boot(tmp_path_factory: pytest.TempPathFactory, kernel: str) -> tuple[RunResult, str]:
    """Boot the kernel with an initramfs whose /init asks for power-off; (result, serial log)."""
    import shutil
    import subprocess

    from viridian.machine.linux_machine import linux_machine

    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (builds the power-off /init)")
    d = tmp_path_factory.mktemp("poweroff")
    (d / "init.c").write_text(INIT_C)
    subprocess.run(["gcc", "-static", "-nostdlib", "-Os", "-fno-pie", "-no-pie", "-fno-stack-protector",
                    "-fno-asynchronous-unwind-tables", "-Wl,-N", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
                    "-o", str(d / "init"), str(d / "init.c")], check=True, capture_output=True)
    (d / "initrd").write_bytes(_newc("init", 0o100755, (d / "init").read_bytes()) + _newc("TRAILER!!!", 0))
    m = linux_machine(get_preset("linux"), kernel, initrd=d / "initrd", max_ticks=BOOT_TICKS)
    result = m.run()
    return result, m.ports.serial.text()


def test_kernel_enables_acpi_cleanly(poweroff_boot: tuple[RunResult, str]) -> None:
    _, log = poweroff_boot
    for line in ("ACPI: FACP 0x", "ACPI: DSDT 0x", "ACPI: 1 ACPI AML tables successfully acquired and loaded",
                 "ACPI: Interpreter enabled", "ACPI: PM: (supports S0 S5)"):
        assert line in log, line
    assert "Unable to enable ACPI" not in log and "Interpreter disabled" not in log
    bad = [ln for ln in log.splitlines() if any(w in ln for w in ("ACPI Error", "ACPI Warning", "ACPI BIOS",
                                                                  "[Firmware Bug]", "ACPI Exception"))]
    assert not bad, bad


def test_kernel_power_off_ends_the_run_exit_0(poweroff_boot: tuple[RunResult, str]) -> None:
    result, log = poweroff_boot
    assert "Run /init as init process" in log and "init[1]: segfault" not in log, log[-3000:]
    assert "ACPI: PM: Preparing to enter system sleep state S5" in log, log[-3000:]
    assert "reboot: Power down" in log, log[-3000:]
    assert (result.status, result.code) == ("exit", 0), result
