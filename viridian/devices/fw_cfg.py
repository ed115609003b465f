"""QEMU's firmware configuration device, legacy I/O interface (engine-free).

What a guest sees under ``qemu-system-x86_64 -machine pc`` (QEMU docs/specs/fw_cfg.rst, hw/nvram/fw_cfg.c,
hw/i386/fw_cfg.c), without the DMA interface:

* Port 0x510 and 0x511 form one 2-byte region (QEMU ``fw_cfg_comb_mem_ops``): a 16-bit write to either port
  selects an item and rewinds its offset to 0; an 8-bit read of either port returns the next byte of the
  selected item and advances the offset; reads past the item's end return 0; 8-bit writes are ignored (write
  support was removed in QEMU 2.4). Other access sizes are invalid in QEMU and read as 0 / do nothing here.
* Selector bit 14 (the old write channel) is ignored; bit 15 picks the architecture-local table (x86: 0x8000
  ACPI tables, 0x8001 SMBIOS, ... -- none is provided here, so those read 0). A key whose index (bits 13:0) is at
  or past the end of the table (0x20 + 32 file slots) selects nothing: reads give 0, as does an empty key.
* Items: 0x00 signature "QEMU"; 0x01 ID = 1 (traditional interface only, no DMA bit: port 0x514 stays
  unclaimed); 0x02 UUID (16 zero bytes); 0x03 RAM_SIZE (u64 LE); 0x04 NOGRAPHIC (u16 0); 0x05 NB_CPUS (u16 LE,
  boot CPUs); 0x0E BOOT_MENU (u16 0); 0x0F MAX_CPUS (u16 LE: QEMU's APIC-ID limit, = the vCPU count here where
  APIC ID = vCPU index); 0x19 FILE_DIR; file 0x20 "etc/boot-fail-wait" (u32 LE 0xFFFFFFFF: QEMU's default
  reboot timeout, -1). FILE_DIR is big-endian: u32 count, then per file {u32 size, u16 select, u16 reserved,
  char name[56]}, sorted by name as QEMU does for current machine types.
* Reset selects key 0 (QEMU ``fw_cfg_reset``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

SELECTOR: Final = 0x510
DATA: Final = 0x511
PORTS: Final = (SELECTOR, DATA)

SIGNATURE: Final = 0x00
ID: Final = 0x01
UUID: Final = 0x02
RAM_SIZE: Final = 0x03
NOGRAPHIC: Final = 0x04
NB_CPUS: Final = 0x05
BOOT_MENU: Final = 0x0E
MAX_CPUS: Final = 0x0F
FILE_DIR: Final = 0x19
FILE_FIRST: Final = 0x20
FILE_SLOTS: Final = 0x20  # QEMU FW_CFG_FILE_SLOTS_DFLT
MAX_ENTRY: Final = FILE_FIRST + FILE_SLOTS  # exclusive limit of an entry index (QEMU fw_cfg_max_entry)
ENTRY_MASK: Final = 0x3FFF  # ~(write channel bit 14 | arch-local bit 15)
WRITE_CHANNEL: Final = 0x4000
ARCH_LOCAL: Final = 0x8000
INVALID: Final = 0xFFFF
ID_TRADITIONAL: Final = 1  # bit 0: the port interface; bit 1 (DMA) is not offered
FILE_NAME_LEN: Final = 56


def default_files() -> dict[str, bytes]:
    """The files this machine's fw_cfg carries (QEMU fw_cfg_reboot: -1 = no reboot after a failed boot)."""
    return {"etc/boot-fail-wait": struct.pack("<I", 0xFFFF_FFFF)}


def build_items(ram_size: int, cpus: int, files: dict[str, bytes]) -> dict[int, bytes]:
    """Key -> bytes (arch-local keys carry bit 15; none are provided)."""
    if len(files) > FILE_SLOTS:
        raise ValueError(f"at most {FILE_SLOTS} fw_cfg files")
    items = {
        SIGNATURE: b"QEMU",
        ID: struct.pack("<I", ID_TRADITIONAL),
        UUID: bytes(16),
        RAM_SIZE: struct.pack("<Q", ram_size),
        NOGRAPHIC: struct.pack("<H", 0),
        NB_CPUS: struct.pack("<H", cpus),
        BOOT_MENU: struct.pack("<H", 0),
        MAX_CPUS: struct.pack("<H", cpus),
    }
    directory = struct.pack(">I", len(files))
    for i, name in enumerate(sorted(files)):
        raw = name.encode("ascii")
        if not raw or len(raw) >= FILE_NAME_LEN:
            raise ValueError(f"fw_cfg file name {name!r}: 1..{FILE_NAME_LEN - 1} bytes")
        key = FILE_FIRST + i
        items[key] = files[name]
        directory += struct.pack(">IHH", len(files[name]), key, 0) + raw.ljust(FILE_NAME_LEN, b"\0")
    items[FILE_DIR] = directory
    return items


@dataclass
class FwCfg:
    """The selector/data port pair; state is the selected key and the read offset."""

    ram_size: int
    cpus: int
    files: dict[str, bytes] = field(default_factory=default_files)
    key: int = SIGNATURE
    offset: int = 0
    items: dict[int, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.items = build_items(self.ram_size, self.cpus, self.files)

    # -- QEMU fw_cfg_select / fw_cfg_data_read ---------------------------------------------------------
    def select(self, key: int) -> None:
        key &= 0xFFFF
        self.offset = 0
        self.key = INVALID if key & ENTRY_MASK >= MAX_ENTRY else key

    def read_byte(self) -> int:
        if self.key == INVALID:
            return 0
        data = self.items.get(self.key & ~WRITE_CHANNEL & 0xFFFF, b"")
        if self.offset >= len(data):
            return 0
        self.offset += 1
        return data[self.offset - 1]

    def reset(self) -> None:
        self.select(SIGNATURE)

    # -- port bus ----------------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        """8-bit reads of 0x510 or 0x511 are data reads (QEMU fw_cfg_comb_valid); other sizes read 0."""
        return self.read_byte() if size == 1 else 0

    def write(self, port: int, size: int, value: int) -> None:
        """16-bit writes select (either port); 8-bit writes are ignored (QEMU >= 2.4); others are invalid."""
        if size == 2:
            self.select(value)

    # -- snapshots (viridian.devices.pc_api) --------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"key": self.key, "offset": self.offset}

    def load_state(self, state: dict[str, Any]) -> None:
        key, offset = state.get("key"), state.get("offset")
        if not isinstance(key, int) or not 0 <= key <= 0xFFFF:
            raise ValueError(f"fw_cfg key {key!r}")
        if not isinstance(offset, int) or not 0 <= offset <= 1 << 32:
            raise ValueError(f"fw_cfg offset {offset!r}")
        self.key, self.offset = key, offset


__all__ = ["DATA", "PORTS", "SELECTOR", "FwCfg", "build_items", "default_files"]
