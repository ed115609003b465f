"""Engine-free construction of the boot state of every vCPU (page tables, GDT, TSS, registers)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from viridian.machine import layout as L

_P, _RW, _PS, _PCD = 1, 2, 0x80, 0x10
_BIG = 1 << 21


def _pack_q(buf: memoryview, addr: int, value: int) -> None:
    struct.pack_into("<Q", buf, addr, value)


def build_page_tables(ram: memoryview, ram_size: int) -> None:
    """Identity map of [0, ram_size), of the 2 MiB page holding the APIC and of the one holding the I/O APIC and
    HPET (0xFEC00000-0xFEDFFFFF, --machine pc), with 2 MiB pages."""
    for addr in range(L.PML4, L.PD_BASE + 4 * L.PAGE, 8):
        _pack_q(ram, addr, 0)
    _pack_q(ram, L.PML4, L.PDPT | _P | _RW)
    for gib in range(4):
        _pack_q(ram, L.PDPT + 8 * gib, (L.PD_BASE + gib * L.PAGE) | _P | _RW)
    for page in range((ram_size + _BIG - 1) // _BIG):
        _pack_q(ram, L.PD_BASE + 8 * page, page * _BIG | _P | _RW | _PS)
    for mmio in (L.APIC_BASE & ~(_BIG - 1), 0xFEC0_0000):
        _pack_q(ram, L.PD_BASE + 8 * (mmio // _BIG), mmio | _P | _RW | _PS | _PCD)


def _segment(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40 | ((limit >> 16) & 0xF) << 48
            | flags << 52 | ((base >> 24) & 0xFF) << 56)


def build_gdt(ram: memoryview, vcpu: int) -> None:
    gdt, tss = L.gdt_address(vcpu), L.tss_address(vcpu)
    entries = [
        0,
        _segment(0, 0xFFFFF, 0x9A, 0xA),  # 0x08 64-bit code, DPL 0
        _segment(0, 0xFFFFF, 0x92, 0xC),  # 0x10 data
        _segment(0, 0xFFFFF, 0xFA, 0xA),  # 0x18 64-bit code, DPL 3
        _segment(0, 0xFFFFF, 0xF2, 0xC),  # 0x20 data, DPL 3
        _segment(tss, L.TSS_LIMIT, 0x89, 0),  # 0x28 available 64-bit TSS (low half)
        tss >> 32,  # TSS high half
    ]
    for i, e in enumerate(entries):
        _pack_q(ram, gdt + 8 * i, e)
    ram[tss : tss + L.TSS_STRIDE] = bytes(L.TSS_STRIDE)


@dataclass(frozen=True)
class BootRegisters:
    """The architectural state a vCPU starts in (README "Guest contract")."""

    rip: int
    rsp: int
    rdi: int
    rsi: int
    rdx: int
    rcx: int
    gdt: int
    tss: int
    cs: int = L.CODE64
    ds: int = L.DATA  # also SS, ES, FS, GS


def boot_registers(vcpu: int, vcpus: int, entry: int, ram_size: int) -> BootRegisters:
    return BootRegisters(entry, L.stack_top(vcpu, ram_size), vcpu, vcpus, ram_size, L.CMDLINE,
                         L.gdt_address(vcpu), L.tss_address(vcpu))


def place_cmdline(ram: memoryview, cmdline: str) -> None:
    """The guest command line at L.CMDLINE (RCX at entry), NUL-terminated."""
    data = cmdline.encode("utf-8")
    if len(data) > L.CMDLINE_MAX or b"\0" in data:
        from viridian.errors import UserError

        raise UserError(f"--cmdline: at most {L.CMDLINE_MAX} bytes and no NUL characters")
    ram[L.CMDLINE : L.CMDLINE + len(data) + 1] = data + b"\0"
