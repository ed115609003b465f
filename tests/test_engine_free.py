"""Issue 2 "Done when": the whole model (the tlfs/config/abi/partition/devices layers, msr/ and the model's
CLI commands) imports and works with no CPU emulator installed -- unicorn and capstone are made
unimportable in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CODE = r"""
import importlib, json, pkgutil, sys
sys.modules['unicorn'] = None
sys.modules['capstone'] = None
import msr, viridian
import viridian.abi, viridian.config, viridian.devices, viridian.partition, viridian.tlfs
names = ['viridian.clock', 'viridian.errors', 'viridian.cli.cpuid_cmd', 'viridian.cli.guest_os_id_cmd']
for name in names:
    importlib.import_module(name)
for pkg in (viridian.tlfs, viridian.config, viridian.abi, viridian.partition, viridian.devices, msr):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):
        importlib.import_module(mod.name)
        names.append(mod.name)
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import HypercallRegisters
from viridian.config import get_preset
from viridian.partition.cpuid import hv_leaves
from viridian.partition.partition import Partition
from viridian.cli.cpuid_cmd import to_json
part = Partition(get_preset('all'), BytesMemory(1 << 20), vp_count=2)
assert part.vps[1].wrmsr(0x40000000, 0x0001040A00004F7C) is None
assert part.vps[1].rdmsr(0x40000002) == 1
out = part.hypercall(0, HypercallRegisters(rcx=0x0008 | 1 << 16, rdx=1))  # fast NotifyLongSpinWait
assert out.ok, out
assert to_json(hv_leaves(get_preset('recommended')))['0x40000001']['eax'] == 0x31237648
print(json.dumps(names))
"""


def test_model_works_without_an_engine() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True, text=True, cwd=ROOT)
    names = set(__import__("json").loads(out.stdout))
    for expected in ("viridian.partition.partition", "viridian.abi.dispatch", "viridian.config.qemu",
                     "viridian.devices.lapic", "viridian.cli.cpuid_cmd", "msr.arch", "msr.x2apic"):
        assert expected in names
