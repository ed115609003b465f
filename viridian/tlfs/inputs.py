"""construct Structs of hypercall input/output blocks, HV_REGISTER_NAME, and the HV_VP_SET codec.

Blocks are little-endian and laid out as in the TLFS hypercall pages (hypercalls/HvCall*.md). Reserved
fields are named ``rsvdz*`` and parse to integers so a handler can test them against 0.

VP sets (TLFS datatypes/hv_vp_set.md): :func:`parse_vp_set` decodes ``(Format, ValidBanksMask, BankContents)``
into a :class:`VpSet` and raises :class:`VpSetError` (a ``ValueError``) for malformed input, carrying the
HV_STATUS a hypervisor answers; :func:`encode_vp_set` is the inverse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from construct import Array, Bytes, BytesInteger, Int8ul, Int16ul, Int24ul, Int32ul, Int64ul, Struct

from viridian.tlfs.hypercalls import HV_MESSAGE_PAYLOAD_SIZE, MAX_VP_SET_BANKS, VpSetFormat
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

__all__ = [
    "ALL_VPS",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER",
    "HV_INPUT_GET_VP_REGISTERS",
    "HV_INPUT_POST_MESSAGE",
    "HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI",
    "HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX",
    "HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER",
    "HV_INPUT_SET_VP_REGISTERS",
    "HV_INPUT_SIGNAL_EVENT",
    "HV_OUTPUT_EXT_QUERY_CAPABILITIES",
    "HV_REGISTER_ASSOC",
    "HV_REGISTER_NAME_ELEMENT",
    "HV_REGISTER_VALUE",
    "HV_VP_SET",
    "REGISTER_MSR",
    "VPS_PER_BANK",
    "HvRegisterName",
    "VpSet",
    "VpSetError",
    "bank_words_from_bytes",
    "encode_vp_set",
    "parse_vp_set",
    "vp_set_bytes",
    "vp_set_from_mask",
]

MASK64: Final = (1 << 64) - 1
VPS_PER_BANK: Final = 64


class HvRegisterName(IntEnum):
    """HV_REGISTER_NAME values of the x64 synthetic registers (TLFS datatypes/hv_register_name.md)."""

    HYPERVISOR_VERSION = 0x00000100  # 128-bit, = CPUID 0x40000002
    PRIVILEGES_AND_FEATURES_INFO = 0x00000200  # 128-bit, = CPUID 0x40000003
    FEATURES_INFO = 0x00000201  # 128-bit, = CPUID 0x40000004
    IMPLEMENTATION_LIMITS_INFO = 0x00000202  # 128-bit, = CPUID 0x40000005
    HARDWARE_FEATURES_INFO = 0x00000203  # 128-bit, = CPUID 0x40000006
    GUEST_CRASH_P0 = 0x00000210
    GUEST_CRASH_P1 = 0x00000211
    GUEST_CRASH_P2 = 0x00000212
    GUEST_CRASH_P3 = 0x00000213
    GUEST_CRASH_P4 = 0x00000214
    GUEST_CRASH_CTL = 0x00000215
    PROCESSOR_CLOCK_FREQUENCY = 0x00000240
    INTERRUPT_CLOCK_FREQUENCY = 0x00000241
    GUEST_IDLE = 0x00000250
    DEBUG_DEVICE_OPTIONS = 0x00000260
    VP_RUNTIME = 0x00090000
    HYPERCALL = 0x00090001
    GUEST_OS_ID = 0x00090002
    VP_INDEX = 0x00090003
    TIME_REF_COUNT = 0x00090004
    EOI = 0x00090010
    ICR = 0x00090011
    TPR = 0x00090012
    VP_ASSIST_PAGE = 0x00090013
    REFERENCE_TSC = 0x00090017
    SINT0 = 0x000A0000
    SINT1 = 0x000A0001
    SINT2 = 0x000A0002
    SINT3 = 0x000A0003
    SINT4 = 0x000A0004
    SINT5 = 0x000A0005
    SINT6 = 0x000A0006
    SINT7 = 0x000A0007
    SINT8 = 0x000A0008
    SINT9 = 0x000A0009
    SINT10 = 0x000A000A
    SINT11 = 0x000A000B
    SINT12 = 0x000A000C
    SINT13 = 0x000A000D
    SINT14 = 0x000A000E
    SINT15 = 0x000A000F
    SCONTROL = 0x000A0010
    SVERSION = 0x000A0011
    SIEFP = 0x000A0012  # md: HvRegisterSifp
    SIMP = 0x000A0013  # md: HvRegisterSipp
    EOM = 0x000A0014
    SIRBP = 0x000A0015
    STIMER0_CONFIG = 0x000B0000
    STIMER0_COUNT = 0x000B0001
    STIMER1_CONFIG = 0x000B0002
    STIMER1_COUNT = 0x000B0003
    STIMER2_CONFIG = 0x000B0004
    STIMER2_COUNT = 0x000B0005
    STIMER3_CONFIG = 0x000B0006
    STIMER3_COUNT = 0x000B0007
    STIME_UNHALTED_TIMER_CONFIG = 0x000B0100
    STIME_UNHALTED_TIMER_COUNT = 0x000B0101


def _register_msr_map() -> dict[HvRegisterName, HvMsr]:
    pairs: dict[HvRegisterName, HvMsr] = {
        HvRegisterName.VP_RUNTIME: HvMsr.VP_RUNTIME,
        HvRegisterName.HYPERCALL: HvMsr.HYPERCALL,
        HvRegisterName.GUEST_OS_ID: HvMsr.GUEST_OS_ID,
        HvRegisterName.VP_INDEX: HvMsr.VP_INDEX,
        HvRegisterName.TIME_REF_COUNT: HvMsr.TIME_REF_COUNT,
        HvRegisterName.EOI: HvMsr.EOI,
        HvRegisterName.ICR: HvMsr.ICR,
        HvRegisterName.TPR: HvMsr.TPR,
        HvRegisterName.VP_ASSIST_PAGE: HvMsr.VP_ASSIST_PAGE,
        HvRegisterName.REFERENCE_TSC: HvMsr.REFERENCE_TSC,
        HvRegisterName.SCONTROL: HvMsr.SCONTROL,
        HvRegisterName.SVERSION: HvMsr.SVERSION,
        HvRegisterName.SIEFP: HvMsr.SIEFP,
        HvRegisterName.SIMP: HvMsr.SIMP,
        HvRegisterName.EOM: HvMsr.EOM,
        HvRegisterName.SIRBP: HvMsr.SIRBP,
        HvRegisterName.STIME_UNHALTED_TIMER_CONFIG: HvMsr.STIME_UNHALTED_TIMER_CONFIG,
        HvRegisterName.STIME_UNHALTED_TIMER_COUNT: HvMsr.STIME_UNHALTED_TIMER_COUNT,
        # by name only [UNSURE]: no source pairs these registers with the MSRs explicitly
        HvRegisterName.GUEST_IDLE: HvMsr.GUEST_IDLE,
        HvRegisterName.PROCESSOR_CLOCK_FREQUENCY: HvMsr.TSC_FREQUENCY,
        HvRegisterName.INTERRUPT_CLOCK_FREQUENCY: HvMsr.APIC_FREQUENCY,
    }
    for n in range(16):
        pairs[HvRegisterName(HvRegisterName.SINT0 + n)] = HvMsr(HvMsr.SINT0 + n)
    for n in range(4):
        pairs[HvRegisterName(HvRegisterName.STIMER0_CONFIG + 2 * n)] = HvMsr(HvMsr.STIMER0_CONFIG + 2 * n)
        pairs[HvRegisterName(HvRegisterName.STIMER0_COUNT + 2 * n)] = HvMsr(HvMsr.STIMER0_COUNT + 2 * n)
    for n in range(6):  # GuestCrashP0..P4, GuestCrashCtl
        pairs[HvRegisterName(HvRegisterName.GUEST_CRASH_P0 + n)] = HvMsr(HvMsr.CRASH_P0 + n)
    return pairs


# Synthetic register -> the MSR holding the same value (for Get/SetVpRegisters on x64; pairs as in Linux
# hvgdk_mini.h's HV_MSR_* compatibility names). The 128-bit CPUID-equivalent registers have no MSR.
REGISTER_MSR: Final[Mapping[HvRegisterName, HvMsr]] = _register_msr_map()


# --- input / output blocks -----------------------------------------------------------------------------------

# HvFlushVirtualAddressSpace input, also the fixed header of HvFlushVirtualAddressList (rep elements are u64
# HV_GVA_RANGE, see layouts.GVA_RANGE): TLFS hypercalls/HvCallFlushVirtualAddressSpace.md / ...List.md.
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE = Struct(
    "address_space" / Int64ul,  # CR3 value
    "flags" / Int64ul,  # HV_FLUSH_FLAGS
    "processor_mask" / Int64ul,  # bit n = VP index n
)
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE

# HV_VP_SET: TLFS datatypes/hv_vp_set.md (one BankContents word per set bit of ValidBanksMask).
HV_VP_SET = Struct(
    "format" / Int64ul,  # VpSetFormat
    "valid_banks_mask" / Int64ul,
    "bank_contents" / Array(lambda this: int(this.valid_banks_mask).bit_count(), Int64ul),
)

# HvFlushVirtualAddressSpaceEx / ListEx: fixed header = AddressSpace, Flags, HV_VP_SET.Format, .ValidBanksMask;
# BankContents arrive as the variable header (TLFS hypercalls/HvCallFlushVirtualAddressSpaceEx.md).
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER = Struct(
    "address_space" / Int64ul,
    "flags" / Int64ul,
    "vp_set_format" / Int64ul,
    "valid_banks_mask" / Int64ul,
)
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX = Struct(  # fixed + variable header as one block
    "address_space" / Int64ul,
    "flags" / Int64ul,
    "processor_set" / HV_VP_SET,
)

# HvCallSendSyntheticClusterIpi: TLFS hypercalls/HvCallSendSyntheticClusterIpi.md (ProcessorMask is 8 bytes).
HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI = Struct(
    "vector" / Int32ul,  # 0x10..0xFF
    "target_vtl" / Int8ul,  # HV_INPUT_VTL (layouts.INPUT_VTL)
    "rsvdz" / Int24ul,
    "processor_mask" / Int64ul,
)

# HvCallSendSyntheticClusterIpiEx: TLFS hypercalls/HvCallSendSyntheticClusterIpiEx.md.
HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER = Struct(
    "vector" / Int32ul,
    "target_vtl" / Int8ul,
    "rsvdz" / Int24ul,
    "vp_set_format" / Int64ul,
    "valid_banks_mask" / Int64ul,
)
HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX = Struct(
    "vector" / Int32ul,
    "target_vtl" / Int8ul,
    "rsvdz" / Int24ul,
    "processor_set" / HV_VP_SET,
)

# HvCallPostMessage input (256 bytes): TLFS hypercalls/HvCallPostMessage.md.
HV_INPUT_POST_MESSAGE = Struct(
    "connection_id" / Int32ul,  # 23:0 id, 31:24 RsvdZ
    "rsvdz" / Int32ul,
    "message_type" / Int32ul,  # non-zero, bit 31 clear
    "payload_size" / Int32ul,  # <= 240
    "message" / Bytes(HV_MESSAGE_PAYLOAD_SIZE),
)

# HvCallSignalEvent input (8 bytes; fast form RDX = ConnectionId | FlagNumber << 32): TLFS HvCallSignalEvent.md.
HV_INPUT_SIGNAL_EVENT = Struct(
    "connection_id" / Int32ul,
    "flag_number" / Int16ul,
    "rsvdz" / Int16ul,
)

# HvCallGetVpRegisters / HvCallSetVpRegisters fixed header: TLFS hypercalls/HvCallGetVpRegisters.md.
HV_INPUT_GET_VP_REGISTERS = Struct(
    "partition_id" / Int64ul,  # HV_PARTITION_ID_SELF = ~0
    "vp_index" / Int32ul,  # HV_VP_INDEX_SELF = 0xFFFFFFFE
    "target_vtl" / Int8ul,  # HV_INPUT_VTL
    "rsvdz" / Int24ul,
)
HV_INPUT_SET_VP_REGISTERS = HV_INPUT_GET_VP_REGISTERS
# GetVpRegisters rep input element (packed u32) and rep output element (HV_REGISTER_VALUE, 16 bytes,
# narrower values zero-extended; TLFS datatypes/hv_register_value.md).
HV_REGISTER_NAME_ELEMENT = Struct("name" / Int32ul)
HV_REGISTER_VALUE = Struct("low" / Int64ul, "high" / Int64ul)
# SetVpRegisters rep input element HV_REGISTER_ASSOC (32 bytes): TLFS hypercalls/HvCallSetVpRegisters.md.
HV_REGISTER_ASSOC = Struct(
    "name" / Int32ul,
    "rsvdz" / BytesInteger(12, swapped=True),
    "value" / HV_REGISTER_VALUE,
)

# HvExtCallQueryCapabilities output (u64 of hypercalls.ExtCapability): TLFS HvExtCallQueryCapabilities.md.
HV_OUTPUT_EXT_QUERY_CAPABILITIES = Struct("capabilities" / Int64ul)

for _struct, _size in (
    (HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE, 24),
    (HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER, 32),
    (HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI, 16),
    (HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER, 24),
    (HV_INPUT_POST_MESSAGE, 256),
    (HV_INPUT_SIGNAL_EVENT, 8),
    (HV_INPUT_GET_VP_REGISTERS, 16),
    (HV_REGISTER_NAME_ELEMENT, 4),
    (HV_REGISTER_VALUE, 16),
    (HV_REGISTER_ASSOC, 32),
    (HV_OUTPUT_EXT_QUERY_CAPABILITIES, 8),
):
    assert _struct.sizeof() == _size, (_struct, _struct.sizeof(), _size)


# --- HV_VP_SET codec -----------------------------------------------------------------------------------------


class VpSetError(ValueError):
    """A malformed HV_VP_SET; ``status`` is the HV_STATUS to answer the hypercall with.

    INVALID_HYPERCALL_INPUT: the number of bank words differs from popcount(ValidBanksMask) (KVM's check; the
    words are the variable header). INVALID_PARAMETER: unknown Format, or a mask/word that is not a u64.
    """

    def __init__(self, message: str, status: HvStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class VpSet:
    """A decoded VP set: every VP of the partition (``all``) or exactly ``indices``."""

    all: bool
    indices: frozenset[int] = frozenset()

    def __contains__(self, vp_index: object) -> bool:
        return self.all or vp_index in self.indices

    def members(self, vp_count: int) -> list[int]:
        """Ascending VP indices of the set that exist in a partition of ``vp_count`` VPs.

        TLFS is silent on indices of VPs that do not exist; KVM ignores them, and so does this."""
        if self.all:
            return list(range(vp_count))
        return sorted(i for i in self.indices if i < vp_count)


ALL_VPS: Final = VpSet(True)


def vp_set_from_mask(processor_mask: int) -> VpSet:
    """The VP set of a non-Ex 64-bit ProcessorMask (bit n = VP index n)."""
    if not 0 <= processor_mask <= MASK64:
        raise VpSetError(f"processor mask {processor_mask:#x} is not a u64", HvStatus.INVALID_PARAMETER)
    return VpSet(False, frozenset(_bits_of(processor_mask)))


def bank_words_from_bytes(data: bytes) -> tuple[int, ...]:
    """Split a variable header into little-endian u64 bank words (VpSetError if not a multiple of 8)."""
    if len(data) % 8:
        raise VpSetError(
            f"{len(data)} bytes of bank contents is not whole u64s", HvStatus.INVALID_HYPERCALL_INPUT
        )
    return tuple(int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8))


def parse_vp_set(format: int, valid_banks_mask: int, bank_words: Sequence[int] | bytes) -> VpSet:
    """Decode an HV_VP_SET; ``bank_words`` are the BankContents (ints, or the raw variable-header bytes).

    Raises :class:`VpSetError` (and nothing else for integer inputs) when the words do not match
    popcount(ValidBanksMask), the Format is neither 0 (sparse) nor 1 (all), or a value is not a u64. With
    Format 1 the mask and words must still agree but their contents are ignored. An all-zero bank is legal.
    """
    if isinstance(bank_words, bytes | bytearray | memoryview):
        bank_words = bank_words_from_bytes(bytes(bank_words))
    if not 0 <= valid_banks_mask <= MASK64:
        raise VpSetError(f"ValidBanksMask {valid_banks_mask:#x} is not a u64", HvStatus.INVALID_PARAMETER)
    if len(bank_words) != valid_banks_mask.bit_count():
        raise VpSetError(
            f"{len(bank_words)} bank words for ValidBanksMask {valid_banks_mask:#x} "
            f"(needs {valid_banks_mask.bit_count()})",
            HvStatus.INVALID_HYPERCALL_INPUT,
        )
    for word in bank_words:
        if not 0 <= word <= MASK64:
            raise VpSetError(f"bank word {word:#x} is not a u64", HvStatus.INVALID_PARAMETER)
    if format == VpSetFormat.ALL:
        return ALL_VPS
    if format != VpSetFormat.SPARSE_4K:
        raise VpSetError(f"unknown HV_VP_SET format {format:#x}", HvStatus.INVALID_PARAMETER)
    indices: set[int] = set()
    for bank, word in zip(_bits_of(valid_banks_mask), bank_words, strict=True):
        base = bank * VPS_PER_BANK
        indices.update(base + bit for bit in _bits_of(word))
    return VpSet(False, frozenset(indices))


def encode_vp_set(vps: Iterable[int] | VpSet) -> tuple[int, int, tuple[int, ...]]:
    """``(Format, ValidBanksMask, BankContents)`` for a VP set or VP indices (0..4095, else ValueError).

    ``ALL_VPS`` encodes as ``(1, 0, ())``; indices as the sparse format with only non-empty banks."""
    if isinstance(vps, VpSet):
        if vps.all:
            return int(VpSetFormat.ALL), 0, ()
        vps = vps.indices
    words: dict[int, int] = {}
    for index in vps:
        if not 0 <= index < MAX_VP_SET_BANKS * VPS_PER_BANK:
            raise ValueError(
                f"VP index {index} does not fit an HV_VP_SET (0..{MAX_VP_SET_BANKS * VPS_PER_BANK - 1})"
            )
        bank, bit = divmod(index, VPS_PER_BANK)
        words[bank] = words.get(bank, 0) | 1 << bit
    mask = sum(1 << bank for bank in words)
    return int(VpSetFormat.SPARSE_4K), mask, tuple(words[bank] for bank in sorted(words))


def _bits_of(value: int) -> Iterable[int]:
    """Positions of the set bits of ``value``, ascending."""
    while value:
        low = value & -value
        yield low.bit_length() - 1
        value ^= low


def vp_set_bytes(vps: Iterable[int] | VpSet) -> bytes:
    """The HV_VP_SET bytes (Format, ValidBanksMask, BankContents) for ``vps``."""
    fmt, mask, banks = encode_vp_set(vps)
    data: Any = HV_VP_SET.build({"format": fmt, "valid_banks_mask": mask, "bank_contents": list(banks)})
    return bytes(data)
