"""Issue 17: a seeded slice of ``make fuzz-inputs`` (viridian/fuzz/inputs.py) -- generated bad host inputs through
main(argv) in-process: no traceback, no stray write or execution, refusals in one line leaving no file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from viridian.fuzz.inputs import campaign

ROOT = Path(__file__).resolve().parents[2]


def test_a_seeded_slice_of_bad_host_inputs_is_clean() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures")], check=True)
    out = campaign(2500, seed=17, guest=ROOT / "fixtures" / "build" / "hello.elf")
    d = out.to_json()
    assert out.clean, d["examples"]
    assert d["cases"] == 2500 and d["by_status"].get("2", 0) > 2000  # mostly refused before a guest runs
    assert set(d["by_category"]) >= {"argv", "record", "libvirt", "special", "image"}
