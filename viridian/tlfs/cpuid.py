"""Hypervisor CPUID leaves 0x40000000-0x4000000A and their bits (TLFS §2 "Feature discovery")."""

from __future__ import annotations

from enum import IntEnum, IntFlag

HYPERVISOR_PRESENT_BIT = 1 << 31  # CPUID.1:ECX[31] (TLFS §2.1)


class Leaf(IntEnum):
    """Hypervisor CPUID leaf numbers (TLFS §2.4)."""

    VENDOR_AND_MAX = 0x40000000
    INTERFACE = 0x40000001
    VERSION = 0x40000002
    FEATURES = 0x40000003
    RECOMMENDATIONS = 0x40000004
    LIMITS = 0x40000005
    HARDWARE_FEATURES = 0x40000006
    CPU_MANAGEMENT = 0x40000007
    SVM_FEATURES = 0x40000008
    NESTED_FEATURES = 0x40000009
    NESTED_OPTIMIZATIONS = 0x4000000A


HV_INTERFACE_SIGNATURE = 0x31237648  # "Hv#1" in 0x40000001.EAX (TLFS §2.4.2)
VENDOR_MICROSOFT_HV = "Microsoft Hv"


class PartitionPrivilege(IntFlag):
    """HV_PARTITION_PRIVILEGE_MASK: 0x40000003.EAX = bits 31:0, EBX = bits 63:32 (TLFS §2.4.4)."""

    # EAX: access to virtual MSRs
    ACCESS_VP_RUNTIME_REG = 1 << 0
    ACCESS_PARTITION_REFERENCE_COUNTER = 1 << 1
    ACCESS_SYNIC_REGS = 1 << 2
    ACCESS_SYNTHETIC_TIMER_REGS = 1 << 3
    ACCESS_INTR_CTRL_REGS = 1 << 4
    ACCESS_HYPERCALL_MSRS = 1 << 5
    ACCESS_VP_INDEX = 1 << 6
    ACCESS_RESET_REG = 1 << 7
    ACCESS_STATS_REG = 1 << 8
    ACCESS_PARTITION_REFERENCE_TSC = 1 << 9
    ACCESS_GUEST_IDLE_REG = 1 << 10
    ACCESS_FREQUENCY_REGS = 1 << 11
    ACCESS_DEBUG_REGS = 1 << 12
    ACCESS_REENLIGHTENMENT_CONTROLS = 1 << 13
    ACCESS_ROOT_SCHEDULER_REG = 1 << 14
    ACCESS_TSC_INVARIANT_CONTROLS = 1 << 15
    # EBX: access to hypercalls (bit n of EBX = mask bit 32+n)
    CREATE_PARTITIONS = 1 << 32
    ACCESS_PARTITION_ID = 1 << 33
    ACCESS_MEMORY_POOL = 1 << 34
    ADJUST_MESSAGE_BUFFERS = 1 << 35
    POST_MESSAGES = 1 << 36
    SIGNAL_EVENTS = 1 << 37
    CREATE_PORT = 1 << 38
    CONNECT_PORT = 1 << 39
    ACCESS_STATS = 1 << 40
    DEBUGGING = 1 << 43
    CPU_MANAGEMENT = 1 << 44
    CONFIGURE_PROFILER = 1 << 45
    ACCESS_VP_EXIT_TRACING = 1 << 46
    ENABLE_EXTENDED_GVA_RANGES_FLUSH_VA_LIST = 1 << 47
    ACCESS_VSM = 1 << 48
    ACCESS_VP_REGISTERS = 1 << 49
    FAST_HYPERCALL_OUTPUT = 1 << 51
    ENABLE_EXTENDED_HYPERCALLS = 1 << 52
    START_VIRTUAL_PROCESSOR = 1 << 53
    ISOLATION = 1 << 54


class PowerFeatures(IntFlag):
    """0x40000003.ECX (TLFS md §2.4.4; Win7-era [3:0] = max processor power state)."""

    MAX_POWER_STATE_C0 = 0
    MAX_POWER_STATE_C1 = 1
    MAX_POWER_STATE_C2 = 2
    MAX_POWER_STATE_C3 = 3
    INVARIANT_MPERF = 1 << 5
    SUPERVISOR_SHADOW_STACK = 1 << 6
    ARCHITECTURAL_PMU = 1 << 7
    EXCEPTION_TRAP_INTERCEPT = 1 << 8
    VP_DISPATCH_INTERRUPT_INJECTION = 1 << 9
    VP_GHCB_ROOT_MAPPING = 1 << 10


class Feature(IntFlag):
    """Miscellaneous features, 0x40000003.EDX (TLFS §2.4.4)."""

    MWAIT_AVAILABLE = 1 << 0  # deprecated
    GUEST_DEBUGGING = 1 << 1
    PERFORMANCE_MONITOR = 1 << 2
    CPU_DYNAMIC_PARTITIONING = 1 << 3
    XMM_HYPERCALL_INPUT = 1 << 4
    GUEST_IDLE_STATE = 1 << 5
    HYPERVISOR_SLEEP_STATE = 1 << 6
    NUMA_DISTANCE_QUERY = 1 << 7
    FREQUENCY_REGS = 1 << 8
    SYNTHETIC_MACHINE_CHECK = 1 << 9
    GUEST_CRASH_REGS = 1 << 10
    DEBUG_REGS = 1 << 11
    NPIEP = 1 << 12
    DISABLE_HYPERVISOR = 1 << 13
    EXTENDED_GVA_RANGES_FOR_FLUSH_VA_LIST = 1 << 14
    XMM_HYPERCALL_OUTPUT = 1 << 15
    SINT_POLLING_MODE = 1 << 17
    HYPERCALL_MSR_LOCK = 1 << 18
    DIRECT_SYNTHETIC_TIMERS = 1 << 19
    PAT_FOR_VSM = 1 << 20
    BNDCFGS_FOR_VSM = 1 << 21
    SYNTHETIC_TIME_UNHALTED_TIMER = 1 << 23
    LBR = 1 << 26


class Recommendation(IntFlag):
    """Implementation recommendations, 0x40000004.EAX (TLFS §2.4.5)."""

    ADDRESS_SPACE_SWITCH_HYPERCALL = 1 << 0
    LOCAL_FLUSH_HYPERCALL = 1 << 1
    REMOTE_FLUSH_HYPERCALL = 1 << 2  # UseHypercallForRemoteFlushAndLocalFlushEntire
    APIC_MSRS = 1 << 3  # UseApicMsrs (EOI/ICR/TPR)
    MSR_FOR_RESET = 1 << 4
    RELAXED_TIMING = 1 << 5
    DMA_REMAPPING = 1 << 6
    INTERRUPT_REMAPPING = 1 << 7
    X2APIC_MSRS = 1 << 8
    DEPRECATE_AUTO_EOI = 1 << 9
    SYNTHETIC_CLUSTER_IPI = 1 << 10
    EX_PROCESSOR_MASKS = 1 << 11
    NESTED = 1 << 12
    INT_FOR_MBEC_SYSCALLS = 1 << 13
    ENLIGHTENED_VMCS = 1 << 14
    SYNCED_TIMELINE = 1 << 15
    CORE_SCHEDULER_REQUESTED = 1 << 16  # Mile.HyperV.TLFS.h (6.0b: reserved)
    DIRECT_LOCAL_FLUSH_ENTIRE = 1 << 17
    NO_NONARCHITECTURAL_CORE_SHARING = 1 << 18
    MMIO_HYPERCALLS = 1 << 21


SPINLOCK_NEVER_NOTIFY = 0xFFFFFFFF  # 0x40000004.EBX: never notify (TLFS 6.0b §2.4.5)
IMPLEMENTED_PA_BITS_MASK = 0x7F  # 0x40000004.ECX[6:0] ImplementedPhysicalAddressBits (0 = not reported)


class HardwareFeature(IntFlag):
    """Hardware features in use, 0x40000006.EAX (TLFS §2.4.7)."""

    APIC_OVERLAY_ASSIST = 1 << 0
    MSR_BITMAPS = 1 << 1
    ARCHITECTURAL_PERFORMANCE_COUNTERS = 1 << 2
    SECOND_LEVEL_ADDRESS_TRANSLATION = 1 << 3
    DMA_REMAPPING = 1 << 4
    INTERRUPT_REMAPPING = 1 << 5
    MEMORY_PATROL_SCRUBBER = 1 << 6
    DMA_PROTECTION = 1 << 7
    HPET_REQUESTED = 1 << 8
    SYNTHETIC_TIMERS_VOLATILE = 1 << 9


class CpuManagementFeature(IntFlag):
    """0x40000007.EAX, root partition only (TLFS 6.0b §2.4.8; Mile.HyperV.TLFS HV_X64_HYPERVISOR_CPU_MANAGEMENT_FEATURES)."""

    START_LOGICAL_PROCESSOR = 1 << 0
    CREATE_ROOT_VIRTUAL_PROCESSOR = 1 << 1
    PERFORMANCE_COUNTER_SYNC = 1 << 2
    RESERVED_IDENTITY_BIT = 1 << 31


class CpuManagementPower(IntFlag):
    """0x40000007.EBX (root partition power management)."""

    PROCESSOR_POWER_MANAGEMENT = 1 << 0
    MWAIT_IDLE_STATES = 1 << 1
    LOGICAL_PROCESSOR_IDLING = 1 << 2


CPU_MANAGEMENT_REMAP_GUEST_UNCACHED = 1 << 0  # 0x40000007.ECX[0]


class SvmFeature(IntFlag):
    """0x40000008.EAX (TLFS 6.0b §2.4.9 HV_HYPERVISOR_SVM_FEATURES); bits 31:11 = MaxPasidSpacePasidCount."""

    SVM_SUPPORTED = 1 << 0


SVM_MAX_PASID_COUNT_SHIFT = 11
SVM_MAX_PASID_COUNT_MASK = 0x1FFFFF << SVM_MAX_PASID_COUNT_SHIFT  # 0x40000008.EAX[31:11]


class NestedPrivilege(IntFlag):
    """0x40000009.EAX: virtual MSRs exposed when running nested (TLFS feature-discovery.md)."""

    ACCESS_SYNIC_REGS = 1 << 2
    ACCESS_INTR_CTRL_REGS = 1 << 4
    ACCESS_HYPERCALL_MSRS = 1 << 5
    ACCESS_VP_INDEX = 1 << 6
    ACCESS_REENLIGHTENMENT_CONTROLS = 1 << 12


class NestedFeature(IntFlag):
    """0x40000009.EDX: hypercall features exposed when running nested (TLFS feature-discovery.md)."""

    XMM_REGISTERS_FOR_FAST_HYPERCALL = 1 << 4
    FAST_HYPERCALL_OUTPUT = 1 << 15
    SINT_POLLING_MODE = 1 << 17


class NestedOptimization(IntFlag):
    """0x4000000A.EAX (eVMCS version in 15:0) (TLFS §2.4.11; QEMU hv-evmcs/hv-tlbflush-direct/hv-emsr-bitmap)."""

    DIRECT_VIRTUAL_FLUSH = 1 << 17
    FLUSH_GUEST_PHYSICAL = 1 << 18
    ENLIGHTENED_MSR_BITMAP = 1 << 19
    VIRTUALIZATION_EXCEPTION = 1 << 20  # Mile.HyperV.TLFS (md: reserved)


EVMCS_VERSION = 0x0101  # QEMU: 0x4000000A.EAX[15:0] with hv-evmcs
EVMCS_VERSION_LOW_MASK = 0x00FF  # 0x4000000A.EAX[7:0] lowest supported eVMCS version
EVMCS_VERSION_HIGH_MASK = 0xFF00  # 0x4000000A.EAX[15:8] highest supported eVMCS version


def vendor_registers(vendor: str) -> tuple[int, int, int]:
    """Pack a 12-byte vendor string into EBX, ECX, EDX (little-endian, zero-padded, truncated)."""
    raw = vendor.encode("ascii", "replace")[:12].ljust(12, b"\0")
    return (
        int.from_bytes(raw[0:4], "little"),
        int.from_bytes(raw[4:8], "little"),
        int.from_bytes(raw[8:12], "little"),
    )


def vendor_string(ebx: int, ecx: int, edx: int) -> str:
    """Inverse of vendor_registers (trailing NULs dropped)."""
    raw = b"".join(r.to_bytes(4, "little") for r in (ebx, ecx, edx))
    return raw.rstrip(b"\0").decode("ascii", "replace")
