"""Debian's 6.1 cloud kernel (an unmodified distribution bzImage, fetched by ``viridian fetch-kernel``'s code
path) detects our Hyper-V offer and reports the privilege and hint values we offered, in its own log.

Skipped with the reason when the package cannot be fetched (no apt, no network). Kept short: only the first
~0.3 s of guest time (decompression, early setup, ms_hyperv_init_platform).
"""

from __future__ import annotations

import re

from viridian.config.presets import load_config
from viridian.machine.linux_boot import load_linux
from viridian.machine.machine import Machine

EARLY_TICKS = 450_000_000


def test_kernel_detects_hyperv_with_our_values(kernel: str) -> None:
    config = load_config(preset="recommended")
    m = Machine(config, load_linux(kernel), vcpus=1, mem_mib=256, max_ticks=EARLY_TICKS,
                cmdline="console=ttyS0 earlyprintk=ttyS0 panic=-1 nokaslr")
    result = m.run()
    log = m.ports.serial.text()
    assert result.status == "timeout", (result, log[-2000:])
    assert "Hypervisor detected: Microsoft Hyper-V" in log, log[-2000:]
    features = m.partition.cpuid(0x4000_0003, 0)
    hints = m.partition.cpuid(0x4000_0004, 0)
    assert features is not None and hints is not None
    want = (f"Hyper-V: privilege flags low {features.eax:#x}, high {features.ebx:#x}, hints {hints.eax:#x}, "
            f"misc {features.edx:#x}")
    assert want in log, re.findall(r"Hyper-V: .*", log)
    assert "Hyper-V: Using hypercall for remote TLB flush" in log
    assert "clocksource: hyperv_clocksource_tsc_page" in log
    assert "BIOS-e820: [mem 0x0000000000100000-" in log
