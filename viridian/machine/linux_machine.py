"""A Machine for a Linux kernel (``viridian boot``, ``viridian compare`` on a kernel): detect a kernel image,
load it with its initrd, build the machine and wire the devices the Linux platform's ACPI tables describe
(viridian.machine.linux_acpi: the HW-reduced Sleep Control/Status registers, so an ACPI power-off ends the run
with status "exit", code 0, as the exit port does)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from viridian.config.enlightenments import Enlightenments
from viridian.errors import UserError
from viridian.machine.power import attach_acpi_sleep

DEFAULT_APPEND = "console=ttyS0 earlyprintk=ttyS0 panic=-1 nokaslr"
PT_NOTE = 4


def is_linux_image(path: str | Path) -> bool:
    """A bzImage (boot_flag 0xAA55 and the "HdrS" setup header, boot.rst) or a vmlinux (an x86-64 ELF with a
    PT_NOTE owned by "Linux", e.g. the build salt every kernel carries). UserError if unreadable."""
    from viridian.inputs import IMAGE_MAX, open_input

    p = Path(path)
    fh, _size = open_input(p, "guest image", IMAGE_MAX)  # a regular file of bounded size (issue 17)
    try:
        with fh:
            head = fh.read(0x1000)
            if head[:4] == b"\x7fELF":
                head += fh.read(IMAGE_MAX)
    except OSError as exc:
        raise UserError(f"cannot read guest image {p}: {exc.strerror}") from None
    if len(head) >= 0x206 and head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:0x206] == b"HdrS":
        return True
    return head[:4] == b"\x7fELF" and _has_linux_note(head)


def _has_linux_note(blob: bytes) -> bool:
    if len(blob) < 64 or blob[4] != 2 or blob[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", blob, 32)
    phentsize, phnum = struct.unpack_from("<HH", blob, 54)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 56 > len(blob):
            return False
        p_type, _f, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", blob, off)
        if p_type != PT_NOTE:
            continue
        at, end = p_offset, min(p_offset + p_filesz, len(blob))
        while at + 12 <= end:  # Elf64_Nhdr: namesz, descsz, type; name and desc 4-byte aligned
            namesz, descsz, _t = struct.unpack_from("<III", blob, at)
            if blob[at + 12 : at + 12 + namesz].rstrip(b"\0") == b"Linux":
                return True
            at += 12 + (namesz + 3 & ~3) + (descsz + 3 & ~3)
    return False


def linux_machine(config: Enlightenments, kernel: str | Path, *, initrd: str | Path | None = None,
                  append: str = DEFAULT_APPEND, vcpus: int = 1, mem_mib: int = 256, **machine_args: Any) -> Any:
    """Load ``kernel`` (+ ``initrd``) and build its Machine (``machine_args``: max_ticks, quantum, pcpus,
    tracer, ...), with the Linux platform devices attached."""
    from viridian.machine.linux_boot import load_linux
    from viridian.machine.machine import Machine

    image = load_linux(kernel, initrd)
    machine_args.setdefault("board", "pc")  # a kernel gets the PC (viridian.machine.pc_machine) unless told
    machine = Machine(config, image, vcpus=vcpus, mem_mib=mem_mib, cmdline=append, **machine_args)
    if machine.platform is None:  # HW-reduced ACPI's sleep registers; the PC powers off through PM1a_CNT
        attach_acpi_sleep(machine)
    return machine
