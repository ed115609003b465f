"""Linux x86 boot protocol (engine-free): bzImage setup header, the zero page (struct boot_params), the
64-bit entry; also an uncompressed vmlinux ELF entered at its physical startup_64.

Sources: Documentation/arch/x86/boot.rst ("The real-mode kernel header", "64-bit boot protocol", "Details of
header fields"), Documentation/arch/x86/zero-page.rst (boot_params offsets), arch/x86/include/uapi/asm/bootparam.h.

Guest-physical layout of a Linux boot (all inside the machine's loader area or the legacy BIOS holes, which the
e820 map reports as reserved):
  0x0400-0x04FF   BIOS data area: EBDA segment (0x40E) and base memory KiB (0x413)
  0x18000         the zero page (boot_params), RSI at the 64-bit entry
  0x1F000         the kernel command line (cmd_line_ptr)
  0x9FC00-0x9FFFF EBDA (reserved, empty)
  0xE0000-0xFFFFF ACPI tables (viridian.machine.linux_acpi), RSDP at 0xE0000
  pref_address    the protected-mode kernel (bzImage) or the vmlinux PT_LOAD segments
  high RAM        the initrd, page-aligned, as high as possible below the vCPU stacks and initrd_addr_max
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from viridian.errors import UserError
from viridian.machine import layout as L
from viridian.machine.loader import Image, Segment

ZERO_PAGE = 0x18000
BDA_EBDA_SEG, BDA_BASE_KIB = 0x40E, 0x413
EBDA = 0x9FC00
BIOS_AREA = 0xE0000  # ACPI tables + RSDP (ACPI 6.5 §5.2.5.1: RSDP in 0xE0000-0xFFFFF on a 16-byte boundary)
BOOT_CS, BOOT_DS = 0x10, 0x18  # boot.rst "64-bit boot protocol": __BOOT_CS / __BOOT_DS
ENTRY64_OFFSET = 0x200  # boot.rst: the 64-bit entry is the protected-mode kernel's load address + 0x200
DEFAULT_LOAD = 0x100_0000
MIN_VERSION = 0x020C  # 2.12: xloadflags (XLF_KERNEL_64)
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH, CAN_USE_HEAP = 1 << 0, 1 << 7
E820_RAM, E820_RESERVED, E820_ACPI = 1, 2, 3
E820_MAX = 128

# boot_params / setup_header offsets (zero-page.rst, boot.rst)
OFF_ACPI_RSDP = 0x070
OFF_EXT_RAMDISK_IMAGE, OFF_EXT_RAMDISK_SIZE, OFF_EXT_CMD_LINE = 0x0C0, 0x0C4, 0x0C8
OFF_E820_ENTRIES, OFF_SENTINEL = 0x1E8, 0x1EF
OFF_HDR = 0x1F1
OFF_E820_TABLE = 0x2D0


@dataclass(frozen=True)
class SetupHeader:
    """The fields of the setup header (boot.rst "The real-mode kernel header") the loader uses."""

    setup_sects: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    raw: bytes  # the header as found in the file, 0x1F1 .. end (boot.rst: 0x202 + byte at 0x201)

    @property
    def kernel_offset(self) -> int:
        """File offset of the protected-mode kernel: (setup_sects + 1) * 512."""
        return (self.setup_sects + 1) * 512


def parse_setup_header(path: str, blob: bytes) -> SetupHeader:
    """Check and decode a bzImage setup header; UserError for anything we cannot boot."""
    if len(blob) < 0x268:
        raise UserError(f"{path}: too short for a Linux bzImage setup header")
    boot_flag, = struct.unpack_from("<H", blob, 0x1FE)
    if boot_flag != 0xAA55 or blob[0x202:0x206] != b"HdrS":
        raise UserError(f"{path}: not a Linux bzImage (no boot_flag 0xAA55 / \"HdrS\" header)")
    version, = struct.unpack_from("<H", blob, 0x206)
    if version < MIN_VERSION:
        raise UserError(f"{path}: boot protocol {version >> 8}.{version & 0xFF} is older than 2.12 "
                        "(no 64-bit entry); use a newer kernel")
    setup_sects = blob[0x1F1] or 4  # boot.rst: "if this field is 0, the real value is 4"
    loadflags = blob[0x211]
    initrd_addr_max, = struct.unpack_from("<I", blob, 0x22C)
    kernel_alignment, = struct.unpack_from("<I", blob, 0x230)
    relocatable = bool(blob[0x234])
    xloadflags, cmdline_size = struct.unpack_from("<HI", blob, 0x236)
    pref_address, init_size = struct.unpack_from("<QI", blob, 0x258)
    hdr_end = 0x202 + blob[0x201]
    if not loadflags & LOADED_HIGH:
        raise UserError(f"{path}: a zImage (loaded low) kernel; only bzImage is supported")
    if not xloadflags & XLF_KERNEL_64:
        raise UserError(f"{path}: the kernel has no 64-bit entry (xloadflags lacks XLF_KERNEL_64)")
    kernel_offset = (setup_sects + 1) * 512
    if kernel_offset >= len(blob):
        raise UserError(f"{path}: setup_sects {setup_sects} points past the end of the file")
    if relocatable and (kernel_alignment == 0 or kernel_alignment & (kernel_alignment - 1)):
        raise UserError(f"{path}: kernel_alignment {kernel_alignment:#x} is not a power of two")
    if init_size == 0:
        raise UserError(f"{path}: init_size is 0")
    return SetupHeader(setup_sects, version, loadflags, initrd_addr_max, kernel_alignment, relocatable,
                       xloadflags, cmdline_size, pref_address, init_size, bytes(blob[OFF_HDR:hdr_end]))


@dataclass(frozen=True)
class LinuxBoot:
    """What the machine must build for a Linux entry besides the loaded segments."""

    load: int  # where the kernel starts
    init_size: int  # bytes from ``load`` the kernel needs before it relocates itself
    header: bytes  # the setup header to copy into the zero page at 0x1F1
    cmdline_size: int
    initrd_addr_max: int
    initrd: bytes = b""
    initrd_path: str = ""
    extra: dict[str, int] = field(default_factory=dict)


def load_linux(path: str | Path, initrd: str | Path | None = None) -> Image:
    """A bzImage (64-bit boot protocol) or an uncompressed vmlinux ELF, with ``initrd`` as its initramfs."""
    p = Path(path)
    from viridian.inputs import IMAGE_MAX, read_input

    blob = read_input(p, "kernel", IMAGE_MAX)  # regular files of bounded size (issue 17)
    rd = b""
    if initrd is not None:
        rd = read_input(initrd, "initrd", IMAGE_MAX)
    if blob[:4] == b"\x7fELF":
        from viridian.machine.loader import _parse_elf

        elf = _parse_elf(str(p), blob)
        load = min(s.paddr for s in elf.segments)
        header = _synthetic_header()
        boot = LinuxBoot(load, elf.end - load, header, 2047, 0x7FFF_FFFF, rd, str(initrd or ""))
        return Image(str(p), "linux", elf.entry, elf.segments, linux=boot)
    hdr = parse_setup_header(str(p), blob)
    load = hdr.pref_address if hdr.pref_address >= DEFAULT_LOAD else DEFAULT_LOAD
    if hdr.relocatable:
        load = (load + hdr.kernel_alignment - 1) & ~(hdr.kernel_alignment - 1)
    kernel = blob[hdr.kernel_offset :]
    boot = LinuxBoot(load, max(hdr.init_size, len(kernel)), hdr.raw, hdr.cmdline_size or 255,
                     hdr.initrd_addr_max or 0x37FF_FFFF, rd, str(initrd or ""))
    return Image(str(p), "linux", load + ENTRY64_OFFSET, (Segment(load, kernel, len(kernel)),), linux=boot)


def _synthetic_header() -> bytes:
    """A setup header for a vmlinux (which has none): protocol 2.15, loaded high, 64-bit entry."""
    hdr = bytearray(0x268 - OFF_HDR)
    struct.pack_into("<H", hdr, 0x1FE - OFF_HDR, 0xAA55)
    hdr[0x202 - OFF_HDR : 0x206 - OFF_HDR] = b"HdrS"
    struct.pack_into("<H", hdr, 0x206 - OFF_HDR, 0x020F)
    hdr[0x211 - OFF_HDR] = LOADED_HIGH
    struct.pack_into("<I", hdr, 0x230 - OFF_HDR, 0x20_0000)
    struct.pack_into("<H", hdr, 0x236 - OFF_HDR, XLF_KERNEL_64)
    return bytes(hdr)


def e820_map(ram_size: int, vcpus: int) -> list[tuple[int, int, int]]:
    """(base, length, type): RAM minus the loader area, the legacy BIOS holes and the vCPU stacks."""
    top = L.reserved_top(vcpus, ram_size)
    return [(0, L.IMAGE_MIN, E820_RESERVED), (L.IMAGE_MIN, EBDA - L.IMAGE_MIN, E820_RAM),
            (EBDA, 0xA0000 - EBDA, E820_RESERVED), (BIOS_AREA, 0x100000 - BIOS_AREA, E820_RESERVED),
            (0x100000, top - 0x100000, E820_RAM), (top, ram_size - top, E820_RESERVED)]


def install(boot: LinuxBoot, ram: memoryview, ram_size: int, vcpus: int, cmdline: str, *, pc: bool = False) -> int:
    """Write the zero page, the initrd, the BIOS data area and the ACPI tables; returns the zero page address
    (RSI at the 64-bit entry). The kernel itself was placed as the image's segments. ``pc``: the full PC's
    tables (fixed-hardware FADT, FACS, HPET; viridian.machine.pc_acpi)."""
    from viridian.machine.acpi import build_acpi

    top = L.reserved_top(vcpus, ram_size)
    if boot.load + boot.init_size > top:
        raise UserError(f"the kernel needs {boot.init_size >> 20} MiB from {boot.load:#x} (init_size) but RAM "
                        f"ends at {top:#x}; raise --mem")
    data = cmdline.encode()
    if len(data) > min(boot.cmdline_size, L.CMDLINE_MAX):
        raise UserError(f"--append: the kernel accepts at most {boot.cmdline_size} bytes")
    zp = bytearray(L.PAGE)
    zp[OFF_HDR : OFF_HDR + len(boot.header)] = boot.header
    zp[0x210] = 0xFF  # type_of_loader: undefined (boot.rst "type_of_loader")
    zp[0x211] = (zp[0x211] | CAN_USE_HEAP) & ~0x20  # loadflags: heap usable, QUIET_FLAG off
    struct.pack_into("<H", zp, 0x224, 0xFE00)  # heap_end_ptr (boot.rst: only meaningful for the real-mode setup)
    struct.pack_into("<I", zp, 0x228, L.CMDLINE)  # cmd_line_ptr
    if boot.initrd:
        limit = min(top, boot.initrd_addr_max + 1)
        start = (limit - len(boot.initrd)) & ~(L.PAGE - 1)
        if start < boot.load + boot.init_size:
            raise UserError(f"initrd {boot.initrd_path} ({len(boot.initrd) >> 10} KiB) does not fit between the "
                            f"kernel and the top of RAM; raise --mem")
        ram[start : start + len(boot.initrd)] = boot.initrd
        struct.pack_into("<II", zp, 0x218, start, len(boot.initrd))  # ramdisk_image, ramdisk_size
    rsdp = build_acpi(ram, BIOS_AREA, vcpus, pc=pc)
    struct.pack_into("<Q", zp, OFF_ACPI_RSDP, rsdp)  # boot_params.acpi_rsdp_addr (protocol 2.14)
    table = e820_map(ram_size, vcpus)
    zp[OFF_E820_ENTRIES] = len(table)
    for i, (base, length, kind) in enumerate(table):
        struct.pack_into("<QQI", zp, OFF_E820_TABLE + 20 * i, base, length, kind)
    zp[OFF_SENTINEL] = 0  # boot.rst: a non-zero sentinel makes the kernel clear fields it cannot trust
    ram[ZERO_PAGE : ZERO_PAGE + L.PAGE] = bytes(zp)
    ram[L.CMDLINE : L.CMDLINE + len(data) + 1] = data + b"\0"
    struct.pack_into("<HH", ram, BDA_EBDA_SEG, EBDA >> 4, 0)  # BDA: EBDA segment
    struct.pack_into("<H", ram, BDA_BASE_KIB, EBDA >> 10)  # BDA: base memory in KiB (639)
    return ZERO_PAGE


def build_boot_gdt(ram: memoryview, gdt: int, tss: int) -> None:
    """The GDT the 64-bit boot protocol asks for: flat __BOOT_CS (0x10, 64-bit code, execute/read) and
    __BOOT_DS (0x18, read/write); 0x08 stays our 64-bit code selector and 0x28 the TSS."""
    from viridian.machine.boot import _segment

    entries = [0, _segment(0, 0xFFFFF, 0x9A, 0xA), _segment(0, 0xFFFFF, 0x9A, 0xA),
               _segment(0, 0xFFFFF, 0x92, 0xC), _segment(0, 0xFFFFF, 0x92, 0xC),
               _segment(tss, L.TSS_LIMIT, 0x89, 0), tss >> 32]
    for i, e in enumerate(entries):
        struct.pack_into("<Q", ram, gdt + 8 * i, e)
