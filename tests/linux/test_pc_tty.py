"""Debian's 6.1 kernel on --machine pc writes init's stdout through the tty layer, which the 8250 driver sends
interrupt-driven (THRE interrupts on IRQ 4 through the I/O APIC; viridian.devices.uart16550): the text reaches
the serial log, and the clocksources the PC offers (HPET, acpi_pm) register without fallbacks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import get_preset
from viridian.machine.machine import RunResult

INIT_C = r"""
/* i386 ABI through INT 0x80, no stack (user page faults: fixtures/initramfs/README.md): mlockall(3);
   write(1, msg, 25); ioctl(1, TCSBRK, 1) (tcdrain: wait until the UART sent it); reboot(POWER_OFF).
   fd 1 is /dev/console = ttyS0. The bss tail in the code's page makes exec's padzero map that page. */
char bss[64];
__asm__(".globl _start\n_start:\n"
        "mov $152, %eax\n mov $3, %ebx\n int $0x80\n"
        "mov $4, %eax\n mov $1, %ebx\n mov $msg, %ecx\n mov $25, %edx\n int $0x80\n"
        "mov $54, %eax\n mov $1, %ebx\n mov $0x5409, %ecx\n mov $1, %edx\n int $0x80\n"
        "mov $88, %eax\n mov $0xfee1dead, %ebx\n mov $672274793, %ecx\n mov $0x4321fedc, %edx\n int $0x80\n"
        "1: pause\n jmp 1b\n"
        "msg: .ascii \"tty: hello through IRQ 4\\n\"\n");
"""
BOOT_TICKS = 8_000_000_000


def _newc(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc cpio member (Documentation/driver-api/early-userspace/buffer-format.rst)."""
    n = name.encode() + b"\0"
    fields = (1, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(n), 0)
    out = b"070701" + "".join(f"{v:08X}" for v in fields).encode() + n
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


class Edges:
    """Counts COM1's rising IRQ edges on their way to the platform."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.rises = sink, 0

    def set_irq(self, irq: int, level: bool) -> None:
        self.rises += level
        self.sink.set_irq(irq, level)


@pytest.fixture(scope="module")
def tty_boot(tmp_path_factory: pytest.TempPathFactory, kernel: str) -> tuple[RunResult, str, int]:
    from viridian.machine.linux_machine import linux_machine

    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (builds the /init)")
    d = tmp_path_factory.mktemp("tty")
    (d / "init.c").write_text(INIT_C)
    subprocess.run(["gcc", "-static", "-nostdlib", "-Os", "-fno-pie", "-no-pie", "-fno-stack-protector",
                    "-fno-asynchronous-unwind-tables", "-Wl,-N", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
                    "-o", str(d / "init"), str(d / "init.c")], check=True, capture_output=True)
    archive = (_newc("dev", 0o040755) + _newc("dev/console", 0o020600, rdev=(5, 1))
               + _newc("init", 0o100755, (d / "init").read_bytes()) + _newc("TRAILER!!!", 0))
    Path(d / "initrd").write_bytes(archive)
    m = linux_machine(get_preset("none"), kernel, initrd=d / "initrd", max_ticks=BOOT_TICKS, board="pc")
    edges = Edges(m.ports.serial.irq)
    m.ports.serial.irq = edges
    result = m.run()
    return result, m.ports.serial.text(), edges.rises


def test_init_stdout_goes_out_interrupt_driven(tty_boot: tuple[RunResult, str, int]) -> None:
    result, log, rises = tty_boot
    assert "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A" in log
    assert "tty: hello through IRQ 4\r\n" in log, (result, log[-1500:])  # the tty adds CR (ONLCR)
    assert (result.status, result.code) == ("exit", 0), result  # S5 through PM1a_CNT
    assert rises >= 2  # the THRE test at open, then the transmit


def test_pc_clocksources_without_fallbacks(tty_boot: tuple[RunResult, str, int]) -> None:
    _, log, _ = tty_boot
    for line in ("ACPI: PM-Timer IO Port: 0xb008", "hpet0: 3 comparators, 64-bit 100.000000 MHz counter",
                 "clocksource: acpi_pm: mask: 0xffffff", "rtc_cmos rtc_cmos: registered as rtc0"):
        assert line in log, line
    for bad in ("Marking TSC unstable", "HPET disabled", "Unable to calibrate", "ACPI Error", "ACPI BIOS"):
        assert bad not in log, bad
