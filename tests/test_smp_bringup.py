"""Machine fixes found bringing up Debian's kernel on 2 and 4 vCPUs (issue 7): an AP's SIPI trampoline at any
vector page, CPUID in the pre-long-mode engine instance, and the page fault the engine raises for a page-scan
probe of an unmapped page."""

from __future__ import annotations

import struct
from pathlib import Path

from unicorn import x86_const as X

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn.realmode import bring_up

# A real -> long mode trampoline for vector 0x99 (linked at 0x99000, as Linux's real-mode blob ends up below the
# EBDA), assembled from:
#   .code16: cli; mov %cs,%ax; mov %ax,%ds; xor %eax,%eax; cpuid; mov %ebx,0x100; cmp $1,%eax; jb fail
#            lgdtl gdtr; CR4.PAE; CR3 = 0x1000 (the loader's PML4); EFER.LME (rdmsr/wrmsr); CR0 |= PE|PG
#            ljmpl $0x08, $0x99055
#   fail:    hlt; jmp fail
#   .code64  0x55: hlt
#   gdtr (0x58): .word 0x37; .long 0x8000 (vCPU 0's boot GDT)
TRAMPOLINE = bytes.fromhex(
    "fa8cc88ed86631c00fa266891e00016683f801723d660f011658000f20e06683c8200f22e066b8001000000f22d866b980"
    "0000c00f32660d000100000f300f20c0660d010000800f22c066ea559009000800f4ebfdf466903700008000000000")
VECTOR = 0x99


def _machine(tmp_path: Path, code: bytes, vcpus: int = 2) -> Machine:
    img = tmp_path / "guest.bin"
    img.write_bytes(code)
    return Machine(load_config(preset="none"), load_image(img), vcpus=vcpus, max_ticks=50_000_000)


def test_sipi_vector_page_that_is_not_64k_aligned(tmp_path: Path) -> None:
    """SDM vol. 3 §8.4.4.1: the AP starts at CS:IP = (vector << 8):0000. Vector 0x99 puts CS.base at 0x99000,
    not a multiple of 64 KiB (the engine's 16-bit start address is linear: a start at 0 ran 0xA0000)."""
    m = _machine(tmp_path, b"\xf4")
    m.ram[VECTOR << 12 : (VECTOR << 12) + len(TRAMPOLINE)] = TRAMPOLINE
    v = m.vcpus[1]
    assert bring_up(v, VECTOR), m.result
    assert v.stats.events["sipi_start"] == 1
    from unicorn import x86_const as X

    assert v.uc.reg_read(X.UC_X86_REG_RIP) == 0x99055  # the 64-bit code after the far jump
    assert v.uc.reg_read(X.UC_X86_REG_CS) == 0x08


def test_cpuid_in_real_mode_answers_in_the_e_registers(tmp_path: Path) -> None:
    """CPUID in the trampoline (Linux's verify_cpu checks leaf 0 >= 1 and the vendor): the 16-bit instance has
    no RAX..RDX in its register API, so the leaf is read from and answered in EAX..EDX."""
    m = _machine(tmp_path, b"\xf4")
    m.ram[VECTOR << 12 : (VECTOR << 12) + len(TRAMPOLINE)] = TRAMPOLINE
    v = m.vcpus[1]
    assert bring_up(v, VECTOR), m.result
    assert bytes(m.ram[(VECTOR << 12) + 0x100 : (VECTOR << 12) + 0x104]) == b"Genu"  # CPUID.0:EBX
    assert v.stats.by_reason["cpuid"] == 1


CODE_VA = 0x80_0000_0000  # PML4 entry 1: a 4 KiB page whose successor is not mapped
PDPT, PD, PT, CODE_PA = 0x70000, 0x71000, 0x72000, 0x73000


def test_page_scan_probe_of_an_unmapped_next_page_is_not_a_guest_fault(tmp_path: Path) -> None:
    """Code on a page followed by an unmapped one (Linux's hypercall page in vmalloc space, before its guard
    page): the native page scan reads a byte of the next page. Through the engine, the failed probe left a #PF
    pending that the engine stop delivered at the block start (a Linux AP oopsed at its first hypercall); the
    hooks' own page walk (guest_pa in vcpu_native.c) never touches the engine's fault state. The guest must
    see no fault (its IDT is empty: any exception would triple-fault)."""
    jump = b"\x48\xb8" + struct.pack("<Q", CODE_VA) + b"\xff\xe0"  # mov rax, CODE_VA; jmp rax
    m = _machine(tmp_path, jump, vcpus=1)
    pml4 = 0x1000
    struct.pack_into("<Q", m.ram, pml4 + 8, PDPT | 3)
    struct.pack_into("<Q", m.ram, PDPT, PD | 3)
    struct.pack_into("<Q", m.ram, PD, PT | 3)
    struct.pack_into("<Q", m.ram, PT, CODE_PA | 3)  # PT[1] (CODE_VA + 4 KiB) stays not present
    code = b"\xf3\x90" + b"\x31\xc0" + b"\xe6\xf4"  # pause (a scan candidate); xor eax, eax; out 0xf4, al
    m.ram[CODE_PA : CODE_PA + len(code)] = code
    res = m.run()
    assert (res.status, res.code) == ("exit", 0), res
    assert m.vcpus[0].stats.exceptions[14] == 0
    assert m.vcpus[0].uc.reg_read(X.UC_X86_REG_CR2) == 0  # nothing wrote the guest's CR2 (engine.SPURIOUS_CR2)


# wrmsr IA32_TSC_AUX = 42; RAX = RDX = RCX = -1; rdtscp; store RAX, RDX, RCX at 0x50000..; RAX = RDX = -1; rdtsc;
# store RAX, RDX at 0x50018..; exit 0
TSC_GUEST = bytes.fromhex(
    "b9030100c0b82a00000031d20f3048c7c0ffffffff48c7c2ffffffff48c7c1ffffffff0f01f94889042500000500488914250800"
    "050048890c251000050048c7c0ffffffff48c7c2ffffffff0f314889042518000500488914252000050031c0e6f4")


def test_rdtsc_and_rdtscp_answer_edx_eax_and_tsc_aux(tmp_path: Path) -> None:
    """SDM vol. 2B RDTSC/RDTSCP: EDX:EAX = TSC with the upper halves of RAX/RDX cleared; RDTSCP also loads
    ECX = IA32_TSC_AUX (which the guest wrote natively); the clock never goes backwards."""
    m = _machine(tmp_path, TSC_GUEST, vcpus=1)
    res = m.run()
    assert (res.status, res.code) == ("exit", 0), res
    rax, rdx, rcx, rax2, rdx2 = struct.unpack_from("<5Q", m.ram, 0x50000)
    assert rcx == 42
    assert rax >> 32 == 0 and rdx >> 32 == 0 and rax2 >> 32 == 0 and rdx2 >> 32 == 0
    first, second = rdx << 32 | rax, rdx2 << 32 | rax2
    assert 0 < first < second
    assert m.vcpus[0].stats.by_reason["rdtsc"] == 2
