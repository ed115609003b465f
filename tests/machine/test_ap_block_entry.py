"""A vCPU started by INIT-SIPI (realmode.py) counts its blocks through block entry like the BSP, with no block
hook (docs/architecture.md, "Block entry"): the Debian oopses that once kept APs on the block hook were the
stale-PC mark of a RIP written in the INTR hook (tests/machine/test_exc_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn import store_watch


def test_sipi_started_vcpu_enters_blocks_natively(guests: Path) -> None:
    m = Machine(load_config(preset="recommended"), load_image(guests / "sipi.elf"), vcpus=2, max_ticks=4_000_000_000)
    result = m.run()
    assert (result.status, result.code) == ("exit", 0), m.ports.serial.text()[-400:]
    if store_watch.TB_ENTRY is None or not store_watch.tb_entry_enabled():
        pytest.skip("block entry is off (this engine build or VIRIDIAN_BLOCK_HOOK/VIRIDIAN_DISABLE)")
    ap = m.vcpus[1]
    assert ap.stats.events["sipi_start"] == 1
    assert ap.native.tb_patch == 1 and ap.native.tb_patched > 0
    assert not ap.block_hooked and not ap.stats.events.get("tb_patch_failed")
