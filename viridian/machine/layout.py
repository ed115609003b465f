"""Where the machine puts things in guest-physical memory at boot (the guest contract, README "Guest contract").

Everything the loader builds lives below 0x100000 (images must load at or above IMAGE_MIN):
  0x1000          PML4
  0x2000          PDPT
  0x3000-0x6FFF   four page directories (2 MiB pages): identity map of RAM and of the APIC page
  0x8000 + i*64   GDT of vCPU i (null, code64 0x08, data 0x10, user code 0x1B, user data 0x23, TSS 0x28)
  0x10000 + i*128 TSS of vCPU i (64-bit, RSP0 and IST1-7 zero: the guest sets its own)
  0x1F000         the guest command line (``viridian run --cmdline``), NUL-terminated, at most 4095 bytes
Stacks: vCPU i's 64 KiB stack is the i-th 64 KiB block down from the top of RAM; RSP starts at its top.
"""

from __future__ import annotations

from typing import Final

PAGE: Final = 0x1000
PML4: Final = 0x1000
PDPT: Final = 0x2000
PD_BASE: Final = 0x3000  # 4 page directories -> the first 4 GiB
GDT_BASE: Final = 0x8000
GDT_STRIDE: Final = 64
TSS_BASE: Final = 0x10000
TSS_STRIDE: Final = 128
TSS_LIMIT: Final = 0x67
MAX_VCPUS: Final = 256
CMDLINE: Final = 0x1F000
CMDLINE_MAX: Final = 4095
IMAGE_MIN: Final = 0x20000  # lowest address an image may load at
FLAT_LOAD: Final = 0x100000
STACK_SIZE: Final = 64 * 1024
APIC_BASE: Final = 0xFEE0_0000
MAX_RAM: Final = 3 << 30  # RAM must end below the APIC/MMIO hole

CODE64: Final = 0x08
DATA: Final = 0x10
USER_CODE64: Final = 0x18 | 3
USER_DATA: Final = 0x20 | 3
TSS_SEL: Final = 0x28

# CR0 = PE | MP | ET | NE | WP | PG; CR4 = PAE | OSFXSR | OSXMMEXCPT; EFER = SCE | LME | LMA | NXE
CR0_BOOT: Final = 0x8001_0033
CR4_BOOT: Final = 0x620
EFER_BOOT: Final = 0xD01


def gdt_address(vcpu: int) -> int:
    return GDT_BASE + vcpu * GDT_STRIDE


def tss_address(vcpu: int) -> int:
    return TSS_BASE + vcpu * TSS_STRIDE


def stack_top(vcpu: int, ram_size: int) -> int:
    return ram_size - vcpu * STACK_SIZE


def reserved_top(vcpus: int, ram_size: int) -> int:
    """Lowest address used by the stacks: images must end below it."""
    return ram_size - vcpus * STACK_SIZE
