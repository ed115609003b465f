"""Multiboot (v1) kernels (engine-free): find and check the header, load ELF32 / ELF64 PT_LOAD segments or
the a.out-kludge addresses, and build the multiboot information structure (Multiboot Specification 0.6.96
§3.1-§3.3; what QEMU's -kernel and GRUB accept).

Machine state at entry (spec §3.2): vCPU 0 in 32-bit protected mode, paging off, flat segments, EAX =
0x2BADB002, EBX = the information structure at :data:`MBI_ADDR`; other vCPUs wait for INIT-SIPI.

As QEMU's -kernel/-append/-initrd (hw/i386/multiboot.c): the command line is "IMAGE ARGS" (the kernel path as
given, one space, the arguments), and modules are loaded page-aligned after the kernel's last byte with
16-byte entries {mod_start, mod_end, string, 0}; the mods flag is set even when mods_count is 0.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from viridian.errors import UserError
from viridian.machine import layout as L

HEADER_MAGIC = 0x1BADB002
BOOT_MAGIC = 0x2BADB002
SEARCH = 8192
FLAG_AOUT_KLUDGE = 1 << 16
MBI_ADDR = 0x1E000  # inside the loader area (below 0x20000), reserved in the memory map
MMAP_ADDR = MBI_ADDR + 0x100
NAME_ADDR = MBI_ADDR + 0x200
LOADER_NAME = b"viridian\0"
MODS_ADDR = MBI_ADDR + 0x280  # module entries (16 bytes each)
MOD_STRINGS = MBI_ADDR + 0x300  # module strings, up to L.CMDLINE
MAX_MODULES = 8


@dataclass(frozen=True)
class Module:
    """A multiboot module: its string (QEMU: the -initrd item as given) and contents."""

    string: str
    data: bytes


def find_header(blob: bytes) -> int | None:
    """Offset of a valid multiboot header (magic + flags + checksum == 0 mod 2**32, 4-aligned), or None."""
    for off in range(0, min(len(blob), SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", blob, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            return off
    return None


def parse(path: str, blob: bytes, off: int) -> tuple[int, list[tuple[int, bytes, int]]]:
    """(entry, [(paddr, data, memsz)]) of a multiboot kernel whose header is at ``off``."""
    flags = struct.unpack_from("<I", blob, off + 4)[0]
    required = flags & 0xFFFC  # spec §3.1.2: bits 0-15 are requirements; we meet 0 (page-aligned) and 1 (memory)
    if required:
        what = "a video mode (flag 2)" if required & 4 else f"flags {required:#x}"
        raise UserError(f"{path}: the multiboot header requires {what}, which viridian does not provide")
    if flags & FLAG_AOUT_KLUDGE:
        if off + 32 > len(blob):
            raise UserError(f"{path}: truncated multiboot a.out header")
        header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<IIIII", blob, off + 12)
        start = off - (header_addr - load_addr)
        if load_addr > header_addr or start < 0:
            raise UserError(f"{path}: multiboot load_addr {load_addr:#x} is after header_addr {header_addr:#x}")
        end = len(blob) if load_end == 0 else start + (load_end - load_addr)
        if end > len(blob) or end < start:
            raise UserError(f"{path}: multiboot load_end_addr {load_end:#x} lies outside the file")
        data = blob[start:end]
        memsz = max(len(data), (bss_end - load_addr) if bss_end else 0)
        return entry, [(load_addr, data, memsz)]
    if blob[:4] != b"\x7fELF":
        raise UserError(f"{path}: multiboot kernel is neither ELF nor uses the a.out kludge (header flag 16)")
    return _elf_segments(path, blob)


def _elf_segments(path: str, blob: bytes) -> tuple[int, list[tuple[int, bytes, int]]]:
    cls = blob[4]
    segs: list[tuple[int, bytes, int]] = []
    if cls == 1:  # ELF32
        entry, phoff = struct.unpack_from("<II", blob, 24)
        phentsize, phnum = struct.unpack_from("<HH", blob, 42)
        fmt, size = "<IIIIIIII", 32
    elif cls == 2:
        entry, phoff = struct.unpack_from("<QQ", blob, 24)
        phentsize, phnum = struct.unpack_from("<HH", blob, 54)
        fmt, size = "<IIQQQQQQ", 56
    else:
        raise UserError(f"{path}: unknown ELF class {cls}")
    for i in range(phnum):
        o = phoff + i * phentsize
        if o + size > len(blob):
            raise UserError(f"{path}: truncated program header table")
        f = struct.unpack_from(fmt, blob, o)
        if cls == 1:
            p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = f[0], f[1], f[2], f[3], f[4], f[5]
        else:
            p_type, p_offset, p_paddr, p_filesz, p_memsz = f[0], f[2], f[4], f[5], f[6]
        if p_type != 1 or p_memsz == 0:
            continue
        if p_offset + p_filesz > len(blob) or p_filesz > p_memsz:
            raise UserError(f"{path}: PT_LOAD segment {i} lies outside the file")
        segs.append((p_paddr, blob[p_offset : p_offset + p_filesz], p_memsz))
    if not segs:
        raise UserError(f"{path}: no PT_LOAD segments")
    if entry >= 1 << 32:
        raise UserError(f"{path}: multiboot entry {entry:#x} is above 4 GiB (it runs in 32-bit mode)")
    return entry, segs


def build_info(ram: memoryview, ram_size: int, cmdline_addr: int, mods: int = 0, mods_count: int = 0) -> int:
    """Write the multiboot information structure; returns its address (EBX at entry). Flags: mem_*, cmdline,
    mods (always, as QEMU sets it: mods_count may be 0), mmap, boot_loader_name."""
    regions = [(0, L.IMAGE_MIN, 2), (L.IMAGE_MIN, 0x9FC00 - L.IMAGE_MIN, 1), (0x9FC00, 0x400, 2),
               (0xF0000, 0x10000, 2), (0x100000, ram_size - 0x100000, 1)]
    mmap = b"".join(struct.pack("<IQQI", 20, base, length, kind) for base, length, kind in regions)
    flags = 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9  # mem_*, cmdline, mods, mmap, boot_loader_name
    info = struct.pack("<IIIIIII16xII", flags, 640, (ram_size - 0x100000) // 1024, 0, cmdline_addr, mods_count,
                       mods, len(mmap), MMAP_ADDR)
    info += bytes(64 - len(info)) + struct.pack("<I", NAME_ADDR)  # boot_loader_name at offset 64
    ram[MBI_ADDR : MBI_ADDR + len(info)] = info
    ram[MMAP_ADDR : MMAP_ADDR + len(mmap)] = mmap
    ram[NAME_ADDR : NAME_ADDR + len(LOADER_NAME)] = LOADER_NAME
    return MBI_ADDR


def kernel_cmdline(image_path: str, args: str) -> bytes:
    """QEMU's multiboot command line: the kernel path as given, one space, the -append text (hw/i386/multiboot.c);
    a test kernel's argv[0] is the image and argv[1:] are the words of ``--cmdline``."""
    data = f"{image_path} {args}".encode()
    if len(data) > L.CMDLINE_MAX or b"\0" in data:
        raise UserError(f"multiboot command line (image path + --cmdline): at most {L.CMDLINE_MAX} bytes, no NUL")
    return data


def install(ram: memoryview, ram_size: int, image_path: str, image_end: int, args: str,
            modules: Sequence[Module], top: int) -> int:
    """Everything a multiboot kernel gets besides its image: the command line "IMAGE ARGS" at L.CMDLINE, the
    modules page-aligned after the image (below ``top``, where the vCPU stacks start), their 16-byte entries
    {mod_start, mod_end, string, 0} and strings, and the information structure. Returns EBX."""
    line = kernel_cmdline(image_path, args)
    ram[L.CMDLINE : L.CMDLINE + len(line) + 1] = line + b"\0"
    if len(modules) > MAX_MODULES:
        raise UserError(f"at most {MAX_MODULES} multiboot modules")
    entries, strings, where = b"", MOD_STRINGS, _page_up(image_end)
    for mod in modules:
        name = mod.string.encode() + b"\0"
        if strings + len(name) > L.CMDLINE or b"\0" in name[:-1]:
            raise UserError("multiboot module strings are too long (at most 3 KiB together)")
        if where + len(mod.data) > top:
            raise UserError(f"multiboot module {mod.string} ({len(mod.data)} bytes) does not fit between the "
                            f"kernel ({image_end:#x}) and the vCPU stacks ({top:#x}); raise --mem")
        ram[where : where + len(mod.data)] = mod.data
        ram[strings : strings + len(name)] = name
        entries += struct.pack("<IIII", where, where + len(mod.data), strings, 0)
        strings += len(name)
        where = _page_up(where + len(mod.data))
    ram[MODS_ADDR : MODS_ADDR + len(entries)] = entries
    return build_info(ram, ram_size, L.CMDLINE, MODS_ADDR, len(modules))


def _page_up(addr: int) -> int:
    return (addr + 0xFFF) & ~0xFFF
