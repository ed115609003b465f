"""Guest image loaders (engine-free): multiboot v1 kernels (viridian.machine.multiboot), ELF64 (PT_LOAD at
p_paddr, entry e_entry) and flat binaries."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viridian.errors import UserError
from viridian.machine import layout as L
from viridian.machine.multiboot import Module, find_header
from viridian.machine.multiboot import parse as parse_multiboot

PT_LOAD = 1


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class Image:
    """A loadable guest: where its bytes go and where every vCPU starts."""

    path: str
    kind: str  # "elf64" | "flat" | "multiboot" (vCPU 0 enters in 32-bit protected mode) | "linux"
    entry: int
    segments: tuple[Segment, ...]
    linux: Any = None  # a viridian.machine.linux_boot.LinuxBoot for kind "linux" (zero page, initrd, ACPI)
    modules: tuple[Module, ...] = ()  # multiboot modules (QEMU -initrd), placed after the image

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def parse_initrd(spec: str) -> list[tuple[str, str]]:
    """QEMU's -initrd syntax for multiboot kernels (hw/i386/multiboot.c): modules separated by ',' (',,' is a
    literal comma); in each, the file path ends at the first space and the whole item is the module's string.
    Returns [(path, string)]."""
    items, cur, i = [], "", 0
    while i < len(spec):
        if spec[i] == ",":
            if spec[i + 1 : i + 2] == ",":
                cur, i = cur + ",", i + 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += spec[i]
        i += 1
    items.append(cur)
    if any(not item.split(" ", 1)[0] for item in items):
        raise UserError(f"--initrd {spec!r}: an empty module path")
    return [(item.split(" ", 1)[0], item) for item in items]


def read_modules(spec: str | None) -> tuple[Module, ...]:
    """The multiboot modules named by ``--initrd`` (QEMU syntax), read from disk."""
    if not spec:
        return ()
    from viridian.inputs import IMAGE_MAX, read_input

    mods = []
    for path, string in parse_initrd(spec):  # regular files of bounded size (issue 17)
        mods.append(Module(string, read_input(path, "multiboot module", IMAGE_MAX)))
    return tuple(mods)


def load_image(path: str | Path, initrd: str | None = None, flat: bool = False) -> Image:
    """Read an image (a path, or the name of a shipped guest such as "win7": ``viridian guests``) and, for a
    multiboot kernel, the ``initrd`` modules; UserError (one line, names the fix) for anything we cannot load.
    ``flat`` (``--flat``) loads the file as a flat binary whatever it holds; without it a text file is refused."""
    p = Path(path)
    if not p.exists():
        from viridian.guests import guest_path, is_guest_name

        if is_guest_name(str(path)):
            p = guest_path(str(path))
    from viridian.inputs import IMAGE_MAX, read_input

    blob = read_input(p, "guest image", IMAGE_MAX)  # a regular file of bounded size (issue 17)
    if not blob:
        raise UserError(f"guest image {p} is empty")
    if flat:
        return Image(str(p), "flat", L.FLAT_LOAD, (Segment(L.FLAT_LOAD, blob, len(blob)),))
    mb = find_header(blob)
    if mb is not None:
        entry, segs = parse_multiboot(str(p), blob, mb)
        return Image(str(p), "multiboot", entry, tuple(Segment(a, d, n) for a, d, n in segs),
                     modules=read_modules(initrd))
    if initrd:
        raise UserError(f"--initrd: {p} is not a multiboot kernel (modules are for multiboot kernels; "
                        "use viridian boot --initrd for a Linux bzImage)")
    if blob[:4] == b"\x7fELF":
        return _parse_elf(str(p), blob)
    if looks_like_text(blob):
        raise UserError(f"{p} is not an ELF or multiboot image; --flat to load it as a flat binary anyway")
    return Image(str(p), "flat", L.FLAT_LOAD, (Segment(L.FLAT_LOAD, blob, len(blob)),))


def looks_like_text(blob: bytes) -> bool:
    """True when the first 4 KiB are UTF-8 text (no NUL, at most 1 in 50 control characters besides tab, CR
    and LF) -- a README or a script, never x86 code, which is full of NULs and bytes >= 0x80 that are not UTF-8."""
    head = blob[:4096]
    if b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(blob) <= len(head) or exc.start < len(head) - 3:  # only a character cut at 4 KiB is text
            return False
        text = head[: exc.start].decode("utf-8")
    controls = sum(1 for ch in text if ord(ch) < 0x20 and ch not in "\t\r\n\f")
    return bool(text) and controls * 50 <= len(text)


def _parse_elf(path: str, blob: bytes) -> Image:
    if len(blob) < 64 or blob[4] != 2 or blob[5] != 1:
        raise UserError(f"{path}: only little-endian ELF64 images are supported (build with -m64)")
    machine, = struct.unpack_from("<H", blob, 18)
    if machine != 0x3E:
        raise UserError(f"{path}: ELF machine {machine:#x} is not x86-64")
    entry, phoff = struct.unpack_from("<QQ", blob, 24)
    phentsize, phnum = struct.unpack_from("<HH", blob, 54)
    segments = []
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 56 > len(blob):
            raise UserError(f"{path}: truncated program header table")
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", blob, off)
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_offset + p_filesz > len(blob) or p_filesz > p_memsz:
            raise UserError(f"{path}: PT_LOAD segment {i} lies outside the file")
        segments.append(Segment(p_paddr, blob[p_offset : p_offset + p_filesz], p_memsz))
    if not segments:
        raise UserError(f"{path}: no PT_LOAD segments")
    return Image(path, "elf64", entry, tuple(segments))


def place_image(image: Image, ram: memoryview, ram_size: int, vcpus: int) -> None:
    """Copy the image into RAM after checking it fits between the loader tables and the stacks."""
    top = L.reserved_top(vcpus, ram_size)
    for seg in image.segments:
        if seg.paddr < L.IMAGE_MIN or seg.paddr + seg.memsz > top:
            raise UserError(
                f"{image.path}: segment at {seg.paddr:#x}-{seg.paddr + seg.memsz:#x} does not fit in guest RAM "
                f"[{L.IMAGE_MIN:#x}, {top:#x}) (loader tables below, vCPU stacks above); raise --mem or relink")
        ram[seg.paddr : seg.paddr + len(seg.data)] = seg.data
        ram[seg.paddr + len(seg.data) : seg.paddr + seg.memsz] = bytes(seg.memsz - len(seg.data))
