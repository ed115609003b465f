"""Our hypercall page and MSR-site recognition (engine-free byte logic).

The hypercall page (TLFS §3.13: contents are the hypervisor's choice; KVM writes ``vmcall; ret``):

    0x00  48 C7 C0 FF FF FF FF   mov rax, -1          sentinel: no result yet
    0x07  0F 1F 40 00            nop dword [rax]      <- the machine's hook runs the call and sets RAX
    0x0B  48 83 F8 FF            cmp rax, -1
    0x0F  75 03                  jne 0x14
    0x11  0F 01 C1               vmcall               reached only if the hook did not run (or a rep
    0x14  C3                     ret                  call continues: RAX stays -1, VMCALL re-runs it)
    0x15  CC ...                 int3 to the end of the page

No result value is all-ones (RepsCompleted <= 4095), so the sentinel is unambiguous. The hook needs no RIP
redirect, which is what makes page hypercalls cheap on Unicorn (docs: unicorn-engine-notes). RAX is not an
input of the x64 convention; 32-bit guests get KVM's ``vmcall; ret`` page instead (EDX:EAX is their input).
"""

from __future__ import annotations

import re
from typing import Final

STUB64: Final = bytes.fromhex("48C7C0FFFFFFFF 0F1F4000 4883F8FF 7503 0F01C1 C3")
HYPERCALL_HOOK_OFFSET: Final = 7
STUB32: Final = bytes.fromhex("0F01C1 C3")
INT3: Final = 0xCC
_PREFIXES: Final = frozenset(range(0x40, 0x50)) | {0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65}


def hypercall_page(long_mode: bool) -> bytes:
    stub = STUB64 if long_mode else STUB32
    return stub + bytes((INT3,)) * (4096 - len(stub))


def is_hypercall_stub(page: bytes) -> bool:
    return page[: len(STUB64)] == STUB64 and page[len(STUB64) : len(STUB64) + 8] == bytes((INT3,)) * 8


def site_offsets(page: bytes) -> list[tuple[int, bool]]:
    """Offsets in the first 4 KiB of ``page`` where RDMSR (0F 32) or WRMSR (0F 30) may start, with a
    flag for WRMSR; a prefix byte right before also makes its address a candidate. ``page`` may carry one
    byte of the next page so a site straddling the boundary is seen."""
    out: list[tuple[int, bool]] = []
    start = 0
    while True:
        i = page.find(b"\x0f", start, 4096)
        if i < 0 or i + 1 >= len(page):
            return out
        second = page[i + 1]
        if second in (0x30, 0x32):
            out.append((i, second == 0x30))
            if i > 0 and page[i - 1] in _PREFIXES:
                out.append((i - 1, second == 0x30))
        start = i + 1


def pause_offsets(page: bytes) -> list[int]:
    """Offsets in the first 4 KiB where PAUSE (F3 90) may start."""
    out, start = [], 0
    while (i := page.find(b"\xf3\x90", start, 4097)) >= 0 and i < 4096:
        out.append(i)
        start = i + 1
    return out


def cr8_offsets(page: bytes) -> list[tuple[int, bool, int]]:
    """MOV to/from CR8 sites (REX.R 0F 22/20 ModRM 11 000 rrr): offset, is_write, GPR number 0-15."""
    out = []
    for m in _CR8.finditer(page[:4100]):
        i = m.start()
        b0, b2, b3 = page[i], page[i + 2], page[i + 3]
        if i < 4096:
            out.append((i, b2 == 0x22, (b3 & 7) | (8 if b0 & 1 else 0)))
    return out


# REX with R set (0100 x1xx), 0F, 20/22, ModRM 11 000 rrr; lookahead so overlapping candidates are all found
_CR8 = re.compile(rb"(?=[\x44-\x47\x4c-\x4f]\x0f[\x20\x22][\xc0-\xc7])", re.DOTALL)
