"""TIME_REF_COUNT answered natively (csrc vn_msr_done): the same values, exits and clocks as the Python MSR
path (which --trace uses), only once the read is offered and on record, for every RDMSR form."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.trace import Tracer
from viridian.partition.reftime import page_time
from viridian.report.run import stats_json
from viridian.tlfs.msrs import HvMsr

OUT = 0x200000  # where the guest below stores what it read


def _run(path: Path, vcpus: int, traced: bool, preset: str = "recommended") -> tuple[Machine, dict[str, Any]]:
    kw: dict[str, Any] = {"tracer": Tracer(io.StringIO(), owned=False)} if traced else {}
    m = Machine(load_config(preset=preset), load_image(path), vcpus=vcpus, max_ticks=4_000_000_000, **kw)
    m.run()
    return m, stats_json(m)


@pytest.mark.parametrize("guest", ["loop_rdmsr.elf", "win7.elf", "negotiate.elf", "conformance.elf"])
def test_native_reference_counter_matches_the_python_path(guests: Path, guest: str) -> None:
    native, s = _run(guests / guest, 2, traced=False)
    python, t = _run(guests / guest, 2, traced=True)
    assert s["exits"]["by_msr"].get("0x40000020", {}).get("read", 0) > 0
    for key in ("result", "exits", "serial", "time"):
        assert s[key] == t[key], key
    if guest != "conformance.elf":  # one 10-byte block more untraced, before this path existed too (notes)
        assert [v.native.bytes for v in native.vcpus] == [v.native.bytes for v in python.vcpus]
    assert any(v.native.native_msr_count for v in native.vcpus)
    assert not any(v.native.native_msr_count for v in python.vcpus)  # --trace sees every exit


def _store(slot: int) -> bytes:
    """mov [OUT + 8*slot], eax; mov [OUT + 8*slot + 4], edx"""
    a = (OUT + 8 * slot).to_bytes(4, "little")
    b = (OUT + 8 * slot + 4).to_bytes(4, "little")
    return b"\x89\x04\x25" + a + b"\x89\x14\x25" + b


RDMSR_FORMS = [b"\x0f\x32", b"\x0f\x32", b"\x48\x0f\x32", b"\x66\x0f\x32", b"\x0f\x32"]


def _guest(tmp_path: Path) -> Path:
    """TIME_REF_COUNT read in each form (plain, REX.W, 66), the last one ending its page (the hook after it is
    on the next page), each value stored; then exit 0."""
    code = bytearray()
    for slot, form in enumerate(RDMSR_FORMS):
        if slot == len(RDMSR_FORMS) - 1:
            pad = (0x1000 - 5 - len(form)) - (len(code) % 0x1000)
            code += b"\x90" * (pad % 0x1000)
        code += b"\xb9" + int(HvMsr.TIME_REF_COUNT).to_bytes(4, "little") + form + _store(slot)
    code += b"\xb0\x00\xe6\xf4"  # out 0xf4, al = 0
    image = tmp_path / "refcount.bin"
    image.write_bytes(bytes(code))
    return image


def _values(m: Machine) -> list[int]:
    raw = bytes(m.ram_buffer[OUT : OUT + 8 * len(RDMSR_FORMS)])
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def test_every_rdmsr_form_reads_the_reference_counter(tmp_path: Path) -> None:
    image = _guest(tmp_path)
    assert (0x100000 + image.stat().st_size - 4 - len(_store(0))) % 0x1000 == 0  # the last RDMSR ends its page
    native, s = _run(image, 1, traced=False)
    python, t = _run(image, 1, traced=True)
    assert s["result"]["status"] == "exit" and s["result"]["code"] == 0
    assert _values(native) == _values(python)
    assert s["exits"] == t["exits"] and s["exits"]["by_msr"]["0x40000020"]["read"] == len(RDMSR_FORMS)
    values = _values(native)
    assert values == sorted(values) and len(set(values)) == len(values)  # 100 ns units, exits cost 0.5 us
    scale = native.partition.time.scale
    assert values[-1] <= page_time(native.clock.tsc(), scale, 0)
    assert native.vcpus[0].native.native_msr_count == 1


def test_not_offered_raises_gp_and_stays_in_python(tmp_path: Path) -> None:
    m, s = _run(_guest(tmp_path), 1, traced=False, preset="none")
    assert m.vcpus[0].native.native_msr_count == 0
    assert s["result"]["status"] != "exit" or s["result"]["code"] != 0  # #GP with no IDT: the run ends
    assert s["exits"]["by_msr"]["0x40000020"]["read"] == 1


def _both_ways(tmp_path: Path, name: str, code: bytes, words: int) -> tuple[Machine, dict[str, Any], list[int]]:
    """Run a flat guest natively and traced (Python path): the same result, exits, clock and stored words;
    returns the native machine, its stats and the ``words`` 64-bit words the guest stored at OUT."""
    image = tmp_path / name
    image.write_bytes(code)
    native, s = _run(image, 1, traced=False)
    python, t = _run(image, 1, traced=True)
    assert s["result"]["status"] == "exit" and s["exits"] == t["exits"] and s["time"] == t["time"]
    raw_n, raw_p = (bytes(m.ram_buffer[OUT : OUT + 8 * words]) for m in (native, python))
    assert raw_n == raw_p
    return native, s, [int.from_bytes(raw_n[i : i + 8], "little") for i in range(0, 8 * words, 8)]


def test_rdtscp_natively_matches_the_python_path(tmp_path: Path) -> None:
    """RDTSCP (vn_rdtscp): EDX:EAX = the TSC, ECX = IA32_TSC_AUX[31:0], exits and clocks as in Python."""
    code = (b"\xb9\x03\x01\x00\xc0"  # mov ecx, IA32_TSC_AUX
            + b"\xb8\x78\x56\x34\x12\xba\xab\x00\x00\x00\x0f\x30"  # eax = 0x12345678, edx = 0xab; wrmsr
            + b"\x48\xc7\xc1\xff\xff\xff\xff"  # rcx = -1 (RDTSCP clears its upper half)
            + b"\x0f\x01\xf9" + _store(0)  # rdtscp
            + b"\x48\x89\x0c\x25" + (OUT + 16).to_bytes(4, "little")  # mov [OUT + 16], rcx
            + b"\x0f\x31" + _store(3)  # rdtsc
            + b"\xb0\x00\xe6\xf4")
    _, s, v = _both_ways(tmp_path, "rdtscp.bin", code, 4)  # EDX:EAX of RDTSCP, -, RCX, EDX:EAX of RDTSC
    assert v[2] == 0x12345678  # TSC_AUX[31:0] zero-extended into RCX
    assert v[3] > v[0] > 0
    assert s["exits"]["by_reason"]["rdtsc"] == 2


def _rdmsr(index: int, slot: int) -> bytes:
    return b"\xb9" + index.to_bytes(4, "little") + b"\x0f\x32" + _store(slot)


def test_mperf_aperf_natively_match_the_python_path(tmp_path: Path) -> None:
    """IA32_MPERF/APERF (SDM vol. 4; msr/arch.py: the partition TSC plus an offset a write sets) answered by
    vn_msr_done after the first read of each: the same values and exits as the Python path, across a write."""
    code = (_rdmsr(0xE7, 0) + _rdmsr(0xE8, 1) + _rdmsr(0xE7, 2) + _rdmsr(0xE8, 3)
            + b"\xb9\xe7\x00\x00\x00\xb8\x00\x10\x00\x00\x31\xd2\x0f\x30"  # wrmsr MPERF = 0x1000
            + _rdmsr(0xE7, 4) + _rdmsr(0xE8, 5) + _rdmsr(0xE7, 6)
            + b"\xb0\x00\xe6\xf4")
    native, s, v = _both_ways(tmp_path, "mperf.bin", code, 7)
    assert v[0] < v[1] < v[2] < v[3] and 0x1000 < v[4] < v[6] < v[5]  # MPERF restarted near 0x1000
    assert s["exits"]["by_msr"]["0x000000e7"] == {"read": 4, "write": 1}
    assert native.vcpus[0].native.native_msr_count == 2  # MPERF, APERF
