"""Issue 19 item 2: what one Unicorn instance shared by all vCPUs (switched by uc_context_save/restore and a TLB
flush at slice ends) costs against one instance per vCPU, measured on bare Unicorn (no hooks, native speed, so
the switch is the only difference): N vCPUs each run an ALU+load loop over its own 64 KiB of data (4-level
paging, so the TLB refill after a switch is paid) in slices of a given length, round robin.

Prints per slice length: instructions per second of each design and their ratio, and the switch's own cost.
The fast engine's quantum is 200,000 ticks (~200 KB of code, ~50,000 instructions of this loop); a kicked
quantum 100,000; the shortest slice 64. Run: .venv/bin/python bench/bench_shared_uc.py [VCPUS] [REPEATS]
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
from typing import Any

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uclib

RAM = 8 << 20
CODE, DATA = 0x10000, 0x200000  # the loop; each vCPU's data at DATA + 64 KiB * i
# loop: add rax, [rbx + rdx]; add rdx, 64; and rdx, 0xffff; dec rcx; jnz loop; hlt  (6 instructions per turn)
LOOP = bytes.fromhex("48 03 04 13 48 83 c2 40 48 81 e2 ff ff 00 00 48 ff c9 75 ed f4".replace(" ", ""))
INSNS_PER_TURN = 5


def _ram() -> Any:
    ram = (ctypes.c_ubyte * RAM)()
    q = lambda a, v: struct.pack_into("<Q", ram, a, v)  # noqa: E731
    q(0x1000, 0x2003)
    q(0x2000, 0x3003)
    for i in range(4):  # 4 x 2 MiB identity pages (PDE PS) -> 8 MiB
        q(0x3000 + 8 * i, (i << 21) | 0x83)
    ctypes.memmove(ctypes.addressof(ram) + CODE, LOOP, len(LOOP))
    return ram


def _uc(ram: Any) -> Any:
    uc: Any = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(16 << 20)
    uc.mem_map_ptr(0, RAM, UC_PROT_ALL, ctypes.addressof(ram))
    uc.reg_write(X.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(X.UC_X86_REG_CR4, 0x20)
    uc.msr_write(0xC000_0080, 0x500)
    uc.reg_write(X.UC_X86_REG_CR0, 0x8000_0011)
    return uc


def _slice(uc: Any, i: int, turns: int) -> None:
    uc.reg_write_batch([(X.UC_X86_REG_RCX, turns), (X.UC_X86_REG_RBX, DATA + (i << 16))])
    uc.emu_start(CODE, 0xFFFF_FFFF_FFFF_FFFF)


def per_vcpu(n: int, turns: int, slices: int) -> float:
    ram = _ram()
    ucs = [_uc(ram) for _ in range(n)]
    for i, uc in enumerate(ucs):
        _slice(uc, i, turns)  # translate first
    t0 = time.process_time()
    for s in range(slices):
        i = s % n
        _slice(ucs[i], i, turns)
    return time.process_time() - t0


def shared(n: int, turns: int, slices: int) -> float:
    ram = _ram()
    uc = _uc(ram)
    ctxs = [uc.context_save() for _ in range(n)]
    h, flush = uc._uch, (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH  # uc.h UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0)
    _slice(uc, 0, turns)
    cur = 0
    t0 = time.process_time()
    for s in range(slices):
        i = s % n
        if i != cur:  # raw public calls (what a compiled switch would cost; the binding adds ~3 us)
            uclib.uc_context_save(h, ctxs[cur].context)
            uclib.uc_context_restore(h, ctxs[i].context)
            uclib.uc_ctl(h, flush)
            cur = i
        _slice(uc, i, turns)
    return time.process_time() - t0


def switch_cost(reps: int = 20000) -> tuple[float, int]:
    uc = _uc(_ram())
    a, b = uc.context_save(), uc.context_save()
    h, flush = uc._uch, (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH
    t0 = time.process_time()
    for _ in range(reps):
        uclib.uc_context_save(h, a.context)
        uclib.uc_context_restore(h, b.context)
        uclib.uc_ctl(h, flush)
    return (time.process_time() - t0) / reps, int(a.size)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cost, size = switch_cost()
    print(f"context save + restore + TLB flush: {cost * 1e6:.1f} us per switch (raw public calls; {size} bytes)")
    print(f"{n} vCPUs, round robin; instructions per CPU-second (best of {repeats}):")
    print(f"{'slice (insns)':>14} {'per-vCPU Ucs':>14} {'one shared Uc':>14} {'shared/per-vCPU':>16}")
    for insns in (250_000, 50_000, 10_000, 2_000):
        turns = insns // INSNS_PER_TURN
        slices = max(40, 20_000_000 // insns)
        a = min(per_vcpu(n, turns, slices) for _ in range(repeats))
        b = min(shared(n, turns, slices) for _ in range(repeats))
        work = slices * turns * INSNS_PER_TURN
        print(f"{insns:>14,} {work / a / 1e6:>12.0f} M {work / b / 1e6:>12.0f} M {a / b:>15.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
