"""QEMU fw_cfg, legacy I/O interface (docs/specs/fw_cfg.rst; hw/nvram/fw_cfg.c semantics), engine-free."""

from __future__ import annotations

import struct

import pytest

from viridian.devices.fw_cfg import DATA, SELECTOR, FwCfg


def read_item(dev: FwCfg, key: int, n: int, *, port: int = DATA) -> bytes:
    dev.write(SELECTOR, 2, key)
    return bytes(dev.read(port, 1) for _ in range(n))


@pytest.mark.parametrize(("key", "expected"), [
    (0x00, b"QEMU"),                                   # FW_CFG_SIGNATURE
    (0x01, struct.pack("<I", 1)),                      # FW_CFG_ID: traditional interface, no DMA bit
    (0x02, bytes(16)),                                 # FW_CFG_UUID
    (0x03, struct.pack("<Q", 128 << 20)),              # FW_CFG_RAM_SIZE, u64 LE
    (0x05, struct.pack("<H", 3)),                      # FW_CFG_NB_CPUS, u16 LE
    (0x0F, struct.pack("<H", 3)),                      # FW_CFG_MAX_CPUS (APIC-ID limit)
    (0x4005, struct.pack("<H", 3)),                    # bit 14 (write channel) is ignored
])
def test_items(key: int, expected: bytes) -> None:
    dev = FwCfg(128 << 20, 3)
    assert read_item(dev, key, len(expected)) == expected


def test_reads_past_the_end_and_unknown_keys_read_zero() -> None:
    dev = FwCfg(64 << 20, 1)
    assert read_item(dev, 0x00, 8) == b"QEMU\0\0\0\0"
    for key in (0x06, 0x18, 0x3F, 0x40, 0x1234, 0x8000, 0x8003, 0xFFFF):  # empty, past the table, arch-local
        assert read_item(dev, key, 4) == bytes(4), hex(key)


def test_selector_rewinds_and_either_port_reads_data_bytes() -> None:
    dev = FwCfg(64 << 20, 2)
    assert read_item(dev, 0x00, 2) == b"QE"
    assert bytes(dev.read(SELECTOR, 1) for _ in range(2)) == b"MU"  # an 8-bit read of 0x510 is a data read
    assert read_item(dev, 0x00, 1) == b"Q"  # selecting again rewinds
    dev.write(DATA, 2, 0x05)  # a 16-bit write to either port of the pair selects
    assert dev.read(DATA, 1) == 2


def test_invalid_sizes_and_byte_writes() -> None:
    dev = FwCfg(64 << 20, 2)
    dev.write(SELECTOR, 2, 0x05)
    dev.write(DATA, 1, 0xAA)  # data writes: no-ops since QEMU 2.4
    dev.write(SELECTOR, 1, 0x00)  # an 8-bit write does not select
    dev.write(SELECTOR, 4, 0x00)  # nor a 32-bit one
    assert dev.read(SELECTOR, 2) == 0 and dev.read(SELECTOR, 4) == 0  # wider reads are invalid: 0
    assert dev.read(DATA, 1) == 2  # still NB_CPUS at offset 0


def test_file_directory_is_big_endian_and_names_its_files() -> None:
    dev = FwCfg(64 << 20, 1, files={"z/last": b"\1\2\3", "etc/boot-fail-wait": b"\xff" * 4})
    count = struct.unpack(">I", read_item(dev, 0x19, 4))[0]
    assert count == 2
    raw = read_item(dev, 0x19, 4 + 64 * count)[4:]
    entries = [struct.unpack_from(">IHH56s", raw, 64 * i) for i in range(count)]
    names = [e[3].rstrip(b"\0").decode() for e in entries]
    assert names == ["etc/boot-fail-wait", "z/last"]  # sorted by name
    for size, select, reserved, name in entries:
        assert reserved == 0 and select >= 0x20
        assert read_item(dev, select, size + 2) == dev.files[name.rstrip(b"\0").decode()] + b"\0\0"


def test_default_files_and_reset() -> None:
    dev = FwCfg(64 << 20, 1)
    raw = read_item(dev, 0x19, 68)
    assert struct.unpack_from(">IIHH", raw) == (1, 4, 0x20, 0) and raw[12:30] == b"etc/boot-fail-wait"
    assert read_item(dev, 0x20, 4) == b"\xff\xff\xff\xff"  # QEMU's default reboot timeout: -1
    dev.write(SELECTOR, 2, 0x05)
    dev.reset()
    assert dev.read(DATA, 1) == ord("Q")


def test_state_round_trip_and_validation() -> None:
    dev = FwCfg(64 << 20, 1)
    read_item(dev, 0x00, 2)
    other = FwCfg(64 << 20, 1)
    other.load_state(dev.save_state())
    assert other.read(DATA, 1) == ord("M")
    for bad in ({"key": -1, "offset": 0}, {"key": 0, "offset": "x"}, {}):
        with pytest.raises(ValueError):
            other.load_state(bad)
