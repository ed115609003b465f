"""Guest actions that hardware answers architecturally (issue 17 item 7): the run never ends "error" (a host
bug) or "hung" for them. Each case of fixtures/guests/machine/hostile_arch.S checks the answer itself and exits
0; the cases whose answer is a shutdown end "triple-fault"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine

# case -> (status, code, the first vector of a triple fault, what the SDM / QEMU give)
CASES = {
    "j": ("exit", 0, None, "JMP/RET/CALL to a non-canonical target: #GP(0) at the branch, nothing pushed/popped"),
    "u": ("exit", 0, None, "beyond RAM through the guest's page tables: reads all-ones, writes dropped"),
    "x": ("exit", 0, None, "XSAVE running off the last mapped page: #PF(W) at the first unmapped byte"),
    "g": ("exit", 0, None, "GDTR beyond RAM: the all-ones descriptor is readable conforming code; DS loads it"),
    "c": ("triple-fault", None, 14, "CR3 beyond RAM: all-ones entries (reserved bits) -> #PF -> #DF -> shutdown"),
    "a": ("triple-fault", None, 14, "CR3 on the APIC page: the same"),
    "i": ("triple-fault", None, 6, "every gate on an IST slot holding 0: the frame faults -> #DF -> shutdown"),
    "o": ("triple-fault", None, 14, "hypercall page over the PML4: the walk reads the overlay -> #PF (fetch)"),
    "d": ("triple-fault", None, 13, "hypercall page over the GDT: DS loads a system descriptor -> #GP(0x10)"),
    "p": ("triple-fault", None, 13, "GDT on the APIC page: DS reads the APIC's registers (a system descriptor) -> "
          "#GP(0x10), whose delivery reads CS 0x08 there too -> #DF -> shutdown (was: an endless engine stop)"),
    "s": ("exit", 0, None, "GDT over RAM, the APIC page and unassigned memory: #GP(selector) at the MOV / INT / UD2"),
    "f": ("exit", 0, None, "a fetch from unassigned memory: all-ones = FF /7, undefined -> #UD at the target; "
          "from the APIC page: #UD too"),
    "r": ("exit", 0, None, "the reference TSC page (read-only overlay) as a page table: the walk's A/D update is "
          "dropped, the read completes, a write through the read-only entry is #PF(P|W)"),
    "e": ("exit", 0, None, "instructions from RAM's last bytes into unassigned memory: decoded with FF bytes (FF FF "
          "#UD at it; MOV AL/RAX take all-ones immediates, then #UD at the next) (was: status 'error')"),
    "l": ("exit", 0, None, "LSS/LFS/LGS, LLDT, far RET, IRETQ, call gates naming descriptors on the APIC page or "
          "unassigned memory: #GP(selector) at the instruction (was: an endless engine stop)"),
    "w": ("exit", 0, None, "a #UD frame pushed through a page table on unassigned memory: #PF(P|W|RSVD), CR2 = "
          "the first push (was: #PF(W), CR2 unchanged)"),
}


def _run(guests: Path, case: str, mem_mib: int = 128) -> Machine:
    m = Machine(load_config(preset="recommended"), load_image(guests / "hostile_arch.elf"), cmdline=case,
                mem_mib=mem_mib, max_ticks=200_000_000)
    m.run()
    return m


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_architectural_answer(guests: Path, case: str) -> None:
    status, code, first, what = CASES[case]
    m = _run(guests, case)
    res = m.result
    assert res is not None and res.status == status, (what, res, m.ports.serial.text())
    if code is not None:
        assert res.code == code, (what, m.ports.serial.text())
    if first is not None:
        assert f"first vector {first}" in res.detail, (what, res.detail)


def test_a_non_canonical_branch_faults_at_the_branch(guests: Path) -> None:
    """Three #GP(0) (jmp, ret, call), each reported at the branch with the stack as before it (the guest checks
    RIP and RSP); the engine's own report is a fault at the target, escalated to #DF."""
    m = _run(guests, "j")
    assert m.total_stats().exceptions == {13: 3}
    assert m.ports.serial.text().count("vec=13 err=0x0") == 3


@pytest.mark.parametrize("mem_mib", [64, 128, 1024])
def test_unassigned_memory_reads_all_ones_at_any_ram_size(guests: Path, mem_mib: int) -> None:
    m = _run(guests, "u", mem_mib)
    assert (m.result.status, m.result.code) == ("exit", 0) if m.result else False
    assert "value=0xffffffffffffffff after-write=0xffffffffffffffff" in m.ports.serial.text()
    assert all(v.stats.events["unassigned memory mapped"] >= 1 for v in m.vcpus[:1])


@pytest.mark.parametrize("mem_mib", [64, 256])
def test_xsave_faults_where_the_mapping_ends(guests: Path, mem_mib: int) -> None:
    m = _run(guests, "x", mem_mib)
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert f"vec=14 err=0x2 cr2={(mem_mib << 20):#x}" in m.ports.serial.text()


def test_unassigned_blocks_never_cover_ram_or_the_apic() -> None:
    from viridian.machine.unicorn.unassigned import free_block

    ram, apic = (0, (128 << 20) - 1), (0xFEE00000, 0xFEE00FFF)
    assert free_block([ram, apic], 0xC0000000) == (0xC0000000, 1 << 21)  # the 1 GiB block holds the APIC
    assert free_block([ram, apic], 128 << 20) == (128 << 20, 1 << 21)
    assert free_block([ram, apic], 0xFEE01000) == (0xFEE01000, 1 << 12)
    assert free_block([ram, apic], 5 << 30) == (5 << 30, 1 << 30)
    assert free_block([ram, apic], 1 << 40) is None  # beyond MAXPHYADDR


def test_descriptors_outside_ram_are_what_the_engine_reads(guests: Path) -> None:
    """SDM vol. 2B "MOV" and vol. 2A "INT n": a DS load from the APIC page (its version register, a system
    descriptor) is #GP(0x1030); INT 0x41 through a gate whose code segment is on unassigned memory (all-ones:
    DPL 3 > CPL 0) is #GP(0x2008), EXT = 0, at the INT; a #UD through a gate whose code segment is on the APIC
    page is #GP(0x1031), EXT = 1, at the UD2; MOV DS from memory #GP(0x1030); LTR of an all-ones descriptor
    (not a TSS) #GP(0x2000); a far JMP to it (conforming, DPL 3 > CPL 0) #GP(0x2008) -- the engine's own report
    for the last three was a #DF (its first #GP cut short by the MMIO read). The guest checks vector, error
    code and RIP of each."""
    m = _run(guests, "s")
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    text = m.ports.serial.text()
    assert [line for line in text.splitlines() if line.startswith("vec=")] == [
        "vec=13 err=0x1030 cr2=0x0", "vec=13 err=0x2008 cr2=0x0", "vec=13 err=0x1031 cr2=0x0",
        "vec=13 err=0x1030 cr2=0x0", "vec=13 err=0x2000 cr2=0x0", "vec=13 err=0x2008 cr2=0x0"]


@pytest.mark.parametrize("mem_mib", [64, 1024])
def test_a_fetch_from_unassigned_memory_is_ud_at_the_target(guests: Path, mem_mib: int) -> None:
    """jmp into an untouched unassigned block, jmp after a data read mapped it, call: three #UD, each at the
    target (the guest checks RIP; the call's return address is pushed); then a jmp to the APIC page: #UD at
    the target (was: status "error", UC_ERR_FETCH_PROT)."""
    m = _run(guests, "f", mem_mib)
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert m.total_stats().exceptions == {6: 4}
    events = m.vcpus[0].stats.events
    assert (events["fetch from unassigned memory"], events["fetch from a device page"]) == (3, 1)


@pytest.mark.parametrize("disable", ["", "store_watch", "all"])
def test_a_walk_never_writes_accessed_into_a_read_only_overlay(guests: Path, disable: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlay's entry 0 (TscSequence = 1: present, read-only) keeps its bits after a read through it (A)
    and a faulting write (D); before the fix the engine's walker wrote A into it: TscSequence 0x21."""
    monkeypatch.setenv("VIRIDIAN_DISABLE", disable)
    m = _run(guests, "r")
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert m.ports.serial.text().splitlines() == [
        "entry=0x1 after-read=0x1", "vec=14 err=0x3 cr2=0xc0600000", "after-write=0x1"]
    assert m.partition.time.sequence == 1 and m.partition.time.page_gpa is not None
    assert m.ram[m.partition.time.page_gpa:m.partition.time.page_gpa + 4].tobytes() == (1).to_bytes(4, "little")


def test_delivery_reads_descriptor_tables_outside_ram_through_io() -> None:
    """Engine-free (delivery.py): the GDT on an MMIO page (identity-mapped at 0xFEE00000) is read through
    ``io``; INT 0x41's gate names selector 0x10, which reads all-ones (a DPL 3 code segment: #GP(0x10), EXT = 0),
    and the #GP is delivered through CS 0x08 (a 64-bit code descriptor there), its frame at the INT itself."""
    import struct

    from viridian.machine.boot import build_page_tables
    from viridian.machine.delivery import CpuView, TripleFault, deliver
    from viridian.machine.paging import PageWalker

    size, idt, apic = 4 << 20, 0x10000, 0xFEE00000
    ram = memoryview(bytearray(size))
    build_page_tables(ram, size)
    for vector, selector in ((0x41, 0x10), (13, 0x08)):
        target = 0x200000 + vector
        lo = (target & 0xFFFF) | selector << 16 | 0xE << 40 | 1 << 47 | (target >> 16) << 48
        struct.pack_into("<QQ", ram, idt + 16 * vector, lo, 0)
    table = {0x08: (0x00209A0000000000).to_bytes(8, "little")}  # present, DPL 0, code, L = 1

    def io(pa: int, length: int) -> bytes:
        return b"".join(table.get(pa - apic + i, b"\xff" * 8)[:min(8, length - i)] for i in range(0, length, 8))

    cpu = CpuView(rip=0x101002, rsp=0x100008, rflags=0x202, cs=0x08, ss=0x10, cr0=0x80010033, cr3=0x1000,
                  idt_base=idt, idt_limit=0xFFF, tss_base=0x11000, gdt_base=apic, gdt_limit=0xFFF)
    d = deliver(PageWalker(ram, size), cpu, 0x41, None, 0x101002, io=io, insn_rip=0x101000)
    assert d.rip == 0x200000 + 13 and d.cs == 0x08
    assert struct.unpack_from("<6Q", ram, d.rsp) == (0x10, 0x101000, 0x08, 0x202, 0x100008, 0x10)
    with pytest.raises(TripleFault):  # without io the table cannot be read: #PF, then #DF, then shutdown
        deliver(PageWalker(ram, size), cpu, 0x41, None, 0x101002, insn_rip=0x101000)


@pytest.mark.parametrize("case", ["p", "s", "f", "r", "o", "e", "l", "w"])
def test_the_answers_cost_the_same_virtual_time_with_fast_paths_off(guests: Path, case: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 17 item 6 for these cases: the outcome, every exit count, the serial text and the clock are the same
    with every fast path forced off (the engine watch, block entry, quiet accesses... -- engine_build.py); `o`
    once faulted 6 bytes later with them on (an overlay change now stops the engine on both paths)."""
    from viridian.report.run import stats_json

    def seen() -> tuple[object, ...]:
        m = _run(guests, case)
        s = stats_json(m)
        exits = {k: v for k, v in s["exits"].items() if k != "events"}
        return s["result"], exits, s["serial"], s["time"], m.vcpus[0].clock_state()["bytes"]

    monkeypatch.delenv("VIRIDIAN_DISABLE", raising=False)
    want = seen()
    monkeypatch.setenv("VIRIDIAN_DISABLE", "all")
    assert seen() == want


@pytest.mark.parametrize("mem_mib", [64, 1024])
def test_an_instruction_running_off_ram_reads_all_ones(guests: Path, mem_mib: int) -> None:
    """The guest maps the unassigned memory right after RAM and runs, from RAM's last bytes: FF | FF.. (#UD at
    it), B0 | FF (MOV AL, 0xFF; then #UD at RAM's end + 1), 48 B8 | FF x8 (RAX = all-ones; #UD at + 8), and B0
    again entered by a jump straight to it -- the guest checks each RIP and value. The engine cannot translate
    any of these blocks (the run ended "error")."""
    m = _run(guests, "e", mem_mib)
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert m.total_stats().exceptions == {6: 4}
    events = m.vcpus[0].stats.events
    assert (events["instruction at the edge of RAM"], events["fetch from unassigned memory"]) == (3, 4)
    assert events["engine stop resumed"] == 0


def test_descriptor_loads_from_the_apic_page_fault_at_the_instruction(guests: Path) -> None:
    """SDM vol. 2A/2B: LSS 0x1030 (APIC page: a system descriptor), LSS 0x2010 (all-ones: code, not writable
    data), LFS 0x1030, LGS 0x1038, LLDT 0x1030 and 0x2000 (not an LDT), far RET and IRETQ to CS 0x1030, a call
    gate to 0x1030 and to 0x2008 (conforming, DPL 3 > CPL 0): each #GP(selector) at the instruction, RSP as
    before it (the guest checks vector, error code and RIP). Before: LSS 0x1030 stopped the engine forever."""
    m = _run(guests, "l")
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    errors = [0x1030, 0x2010, 0x1030, 0x1038, 0x1030, 0x2000, 0x1030, 0x1030, 0x1030, 0x2008]
    assert [line for line in m.ports.serial.text().splitlines() if line.startswith("vec=")] == [
        f"vec=13 err={e:#x} cr2=0x0" for e in errors]
    assert m.total_stats().exceptions == {13: 10}


def test_a_fault_while_delivering_walks_tables_outside_ram_and_counts(guests: Path) -> None:
    """A #UD on IST 1 whose stack's page table is on unassigned memory: the frame's first push (SS) walks an
    all-ones entry -> #PF(P|W|RSVD) at the UD2 with CR2 = IST1 - 8, delivered instead (SDM Table 6-5: benign
    then #PF); both exceptions are counted."""
    m = _run(guests, "w")
    assert m.result is not None and (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert "vec=14 err=0xb cr2=0xc0800ff8" in m.ports.serial.text()
    assert m.total_stats().exceptions == {6: 1, 14: 1}


def test_page_walk_reads_entries_outside_ram_as_the_engine_does() -> None:
    """paging.py, engine-free (SDM vol. 3A §4.5.4, §4.6, §4.7): a page table outside RAM read through ``io`` --
    all-ones (unassigned) is a reserved-bit fault (P | RSVD), a device's 0 not present; without ``io`` not
    present; reserved bits in RAM entries; R/W under CR0.WP; U/S."""
    import struct

    from viridian.machine.paging import PageWalker

    size, pt_out = 1 << 20, 0xC000_0000
    ram = memoryview(bytearray(size))
    struct.pack_into("<Q", ram, 0x1000, 0x2007)  # PML4[0] -> PDPT 0x2000 (user)
    struct.pack_into("<Q", ram, 0x2000, 0x3007)  # PDPT[0] -> PD 0x3000 (user)
    pd = {0: pt_out | 3, 1: 0x4003, 2: 0x0000_0100_0000_0083, 3: 0x2083, 4: 0x87, 5: 0x85}
    for i, e in pd.items():
        struct.pack_into("<Q", ram, 0x3000 + 8 * i, e)
    struct.pack_into("<Q", ram, 0x4000, 0x5001)  # PT[0]: present, read-only, supervisor
    w = PageWalker(ram, size)
    cr0, wp = 0x8000_0001, 0x8001_0001

    def ones(_pa: int, n: int) -> bytes:
        return b"\xff" * n

    def zeros(_pa: int, n: int) -> bytes:
        return bytes(n)

    table = [  # (vaddr, write, user, cr0, io) -> (pa, error)
        ((0, False, False, cr0, ones), (None, 0x9)), ((0, True, False, cr0, ones), (None, 0xB)),
        ((0, False, False, cr0, zeros), (None, 0)), ((0, False, False, cr0, None), (None, 0)),
        ((0x200000, False, False, cr0, None), (0x5000, 0)), ((0x200000, True, False, cr0, None), (0x5000, 0)),
        ((0x200000, True, False, wp, None), (None, 0x3)), ((0x200000, False, True, cr0, None), (None, 0x5)),
        ((0x400000, False, False, cr0, None), (None, 0x9)),  # bit 40 >= MAXPHYADDR
        ((0x600000, False, False, cr0, None), (None, 0x9)),  # a 2 MiB page with bit 13 set
        ((0x800123, False, True, cr0, None), (0x123, 0)),  # a user 2 MiB page at 0
        ((0xA00000, True, True, cr0, None), (None, 0x7)),  # user write, read-only user page
    ]
    for (va, write, user, c0, io), want in table:
        assert w.walk(0x1000, c0, va, write, user, io) == want, (hex(va), write, user, hex(c0))
    struct.pack_into("<Q", ram, 0x1000, 0x2083)  # PML4E.PS is reserved
    assert w.walk(0x1000, cr0, 0x200000) == (None, 0x9)


def test_delivery_reports_its_faults_and_cr2() -> None:
    """delivery.py, engine-free: a #UD whose frame cannot be pushed (its stack's page not present) raises #PF
    (benign then page fault: the #PF is delivered, SDM Table 6-5) with CR2 = the first push (SS, the frame's
    top qword) and error code W; Delivery.raised lists it. A #GP in the same place becomes #DF (raised: 8)."""
    import struct

    from viridian.machine.boot import build_page_tables
    from viridian.machine.delivery import CpuView, deliver
    from viridian.machine.paging import PageWalker

    size, idt = 4 << 20, 0x10000
    ram = memoryview(bytearray(size))
    build_page_tables(ram, size)
    for vector in (6, 8, 13, 14):
        target = 0x200000 + vector
        ist = 1 << 32 if vector in (6, 13) else 0
        lo = (target & 0xFFFF) | 0x08 << 16 | 0xE << 40 | 1 << 47 | (target >> 16) << 48 | ist
        struct.pack_into("<QQ", ram, idt + 16 * vector, lo, 0)
    tss = 0x11000
    struct.pack_into("<Q", ram, tss + 0x24, 0x40000000)  # IST1: beyond the mapped 4 MiB
    cpu = CpuView(rip=0x101000, rsp=0x100008, rflags=0x202, cs=0x08, ss=0x10, cr0=0x80010033, cr3=0x1000,
                  idt_base=idt, idt_limit=0xFFF, tss_base=tss)
    d = deliver(PageWalker(ram, size), cpu, 6, None, 0x101000, external=True)
    assert (d.rip, d.raised, d.cr2) == (0x200000 + 14, (14,), 0x40000000 - 8)
    assert struct.unpack_from("<Q", ram, d.rsp)[0] == 2  # not present, write, supervisor
    d = deliver(PageWalker(ram, size), cpu, 13, 0, 0x101000, external=True)
    assert (d.rip, d.raised, d.cr2) == (0x200000 + 8, (8,), 0x40000000 - 8)


def test_engine_stops_without_progress_are_resumed_a_bounded_number_of_times() -> None:
    """lost_fault.resume_stop: stops at one RIP whose clock moved only by whole exits (an MMIO read each round)
    are resumed STOP_ROUNDS times, then refused (the run ends "error", never a hang); a completed instruction
    byte in between, or another RIP, starts the count again."""
    from types import SimpleNamespace

    from viridian.machine.backend import EXIT_TICKS
    from viridian.machine.unicorn.lost_fault import STOP_ROUNDS, resume_stop

    v: Any = SimpleNamespace(native=SimpleNamespace(bytes=100), unexplained_stop=None,
                             stats=SimpleNamespace(events={"engine stop resumed": 0}))
    answers = []
    for _ in range(STOP_ROUNDS + 2):
        answers.append(resume_stop(v, 0x1000))
        v.native.bytes += 2 * EXIT_TICKS  # two MMIO exits, no instruction completed
    assert answers == [True] * STOP_ROUNDS + [False, True]
    for _ in range(3 * STOP_ROUNDS):  # a loop: 7 instruction bytes and one exit between the stops
        assert resume_stop(v, 0x1000)
        v.native.bytes += EXIT_TICKS + 7
    v.unexplained_stop = None
    for i in range(3 * STOP_ROUNDS):  # alternating RIPs
        assert resume_stop(v, 0x1000 + (i & 1))
