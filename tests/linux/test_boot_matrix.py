"""The boot matrix's verdicts (viridian.lab.boot_matrix.classify), table-driven from real kernel log lines."""

from __future__ import annotations

import pytest

from viridian.lab.boot_matrix import PANIC, classify

PANIC_LOG = f"[    2.1] Kernel panic - not syncing: {PANIC} on unknown-block(0,0)\n"


@pytest.mark.parametrize(("status", "log", "verdict"), [
    ("crash", PANIC_LOG, "ok"),
    ("reset", PANIC_LOG, "ok"),
    ("timeout", PANIC_LOG, "timeout"),
    ("timeout", "[    0.0] Linux version 6.1\n", "no-panic"),
    ("crash", "[    0.0] tsc: Marking TSC unstable due to running on Hyper-V\n" + PANIC_LOG, "ok"),
    ("crash", "[    0.0] tsc: Marking TSC unstable due to TSCs unsynchronized\n" + PANIC_LOG, "fallback"),
    ("timeout", "[    0.000000] tsc: Unable to calibrate against PIT\n", "fallback"),
    ("crash", "[    0.1] ..MP-BIOS bug: 8254 timer not connected to IO-APIC\n" + PANIC_LOG, "fallback"),
    ("crash", "[    1.0] clocksource: timekeeping watchdog: Marking clocksource tsc as unstable\n" + PANIC_LOG, "fallback"),
    ("crash", "[    1.0] clocksource tsc unstable (delta = 123 ns)\n" + PANIC_LOG, "fallback"),
    ("crash", "[    1.2] BUG: kernel NULL pointer dereference, address: 0\n" + PANIC_LOG, "oops"),
    ("crash", "[    1.2] Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: x\n", "oops"),
    ("crash", "[    1.2] general protection fault, probably for non-canonical address\n" + PANIC_LOG, "oops"),
    ("timeout", "[    1.2] watchdog: BUG: soft lockup - CPU#1 stuck for 22s!\n", "oops"),
])
def test_classify(status: str, log: str, verdict: str) -> None:
    assert classify(status, log)[0] == verdict


def test_detail_names_the_line() -> None:
    v, detail = classify("crash", "a\n[ 1.2] BUG: unable to handle page fault for address: 0\nb\n" + PANIC_LOG)
    assert v == "oops" and detail == "[ 1.2] BUG: unable to handle page fault for address: 0"


@pytest.mark.parametrize(("offer", "vcpus"), [("none", 1), ("xen-3.4", 2)])
def test_matrix_subset_is_green(kernel: str, offer: str, vcpus: int) -> None:
    """CI's slice of `make linux-matrix` (the kernel comes from `viridian fetch-kernel`, apt-get download, cached;
    skipped with the reason when it cannot be fetched): the offers without the Hyper-V clock boot to the
    root-mount panic on the PC platform, with no oops and no timer fall-back."""
    from viridian.lab.boot_matrix import boot_cell

    cell = boot_cell(kernel, offer, vcpus)
    assert cell.ok, (cell.verdict, cell.detail)
