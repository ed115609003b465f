"""The C fast paths take their constants from the model when an engine is built (issue 19: one source of
truth): the fast NotifyLongSpinWait input value, COM1's idle LSR and our hypercall page's signature are the
model's, and the compiled paths answer with what they were given."""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.abi.control import HypercallControl
from viridian.config.presets import load_config
from viridian.devices.uart16550 import LSR_TEMT, LSR_THRE
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.stubs import HYPERCALL_HOOK_OFFSET, STUB64
from viridian.machine.unicorn import engine_build
from viridian.tlfs.hypercalls import HvCall


def _machine(guests: Path, max_ticks: int = 4_000_000_000) -> Machine:
    return Machine(load_config(preset="recommended"), load_image(guests / "hello.elf"), max_ticks=max_ticks)


def test_the_constants_are_the_models(guests: Path) -> None:
    n = _machine(guests).vcpus[0].native  # type: ignore[attr-defined]
    assert n.spin_control == HypercallControl(code=int(HvCall.NOTIFY_LONG_SPIN_WAIT), fast=True).encode() == 0x10008
    assert n.lsr_idle == LSR_THRE | LSR_TEMT == 0x60
    assert bytes(n.stub_sig[:n.stub_len]) == STUB64[:HYPERCALL_HOOK_OFFSET + 4]


def test_the_native_console_answers_the_lsr_it_was_given(guests: Path) -> None:
    if not engine_build.enabled("native_serial"):
        pytest.skip("VIRIDIAN_DISABLE turned the native console off (the port bus answers)")
    ok = _machine(guests)
    ok.run()
    assert ok.result is not None and ok.result.status == "exit" and ok.ports.serial.text()
    stuck = _machine(guests, max_ticks=20_000_000)
    stuck.vcpus[0].native.lsr_idle = 0  # type: ignore[attr-defined]  # THR never empty: the guest waits
    stuck.run()
    assert stuck.result is not None and stuck.result.status == "timeout"
    assert stuck.ports.serial.text() == ""
