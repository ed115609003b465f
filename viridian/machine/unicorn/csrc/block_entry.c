/* Block entry without a block hook (viridian/machine/unicorn/store_watch.py, docs/architecture.md "machine").
 *
 * Unicorn 2.1.4 starts every translation block with a call of its exit-request check:
 *     movabs $uc, %rdi ; xor %esi, %esi ; call helper_check_exit_request   (rel32, or *pool(%rip) when far)
 * (`lea uc(%rip), %rdi` instead of the movabs when the handle lies within 2 GiB of the code: an engine made in a
 * thread other than the main one).
 * A UC_HOOK_BLOCK hook adds a second helper call (and a walk of the block-hook list) to every block, which
 * made the exit-free loop run at 0.4x bare Unicorn. Instead, right after the engine translates a block of a
 * vCPU (vn_tb_gen_code), the call's two operands are rewritten: the engine handle becomes the vCPU's
 * vn_state and the callee vn_tb_enter (vcpu_native.c), which does what the block hook did and hands over to
 * the engine's check only when the engine must leave. Everything is checked first -- the block's pc, the
 * place of its host code, the exact instruction bytes, the call's target; a block that does not look like
 * that is left alone, patching stops for the vCPU and its run stops (tb_patch_failed), and the machine goes
 * back to the block hook. The engine's code buffer is mapped read-write-execute (checked by Python). Stubs
 * (two pages, next to the engine library) are made once per process.
 */
#define _GNU_SOURCE
#include <sys/mman.h>
#include "vn_state.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define REACH ((1LL << 31) - (1LL << 20))

static void *real_check;       /* helper_check_exit_request, the call every block starts with */
static uint8_t *stubs[2];      /* jumps to vn_tb_enter just below and just above the engine library */
static int stub_count;
static uint64_t tb_code_off;   /* a block's host code starts this many bytes past its TranslationBlock (0: unseen) */

static int reach(const uint8_t *from, const uint8_t *to) {
    int64_t d = (int64_t)((uintptr_t)to - (uintptr_t)from);
    return d > -REACH && d < REACH;
}

/* A 14-byte jump (jmp *0(%rip); .quad vn_tb_enter) on a page of its own near `at` (never inside a mapping). */
static uint8_t *make_stub(uintptr_t at, int down) {
    for (uintptr_t k = 1; k <= 256; k++) {
        uintptr_t hint = (down ? at - k * 0x10000 : at + k * 0x10000) & ~(uintptr_t)0xFFFF;
        void *p = mmap((void *)hint, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
        if (p == MAP_FAILED)
            continue;
        if ((uintptr_t)p != hint) {  /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
            munmap(p, 4096);
            continue;
        }
        static const uint8_t jmp[6] = {0xFF, 0x25, 0, 0, 0, 0};
        uint64_t target = (uint64_t)(uintptr_t)vn_tb_enter;
        memcpy(p, jmp, 6);
        memcpy((uint8_t *)p + 6, &target, 8);
        if (mprotect(p, 4096, PROT_READ | PROT_EXEC) != 0) {
            munmap(p, 4096);
            return 0;
        }
        return p;
    }
    return 0;
}

/* check: the engine's exit-request helper; [lib_lo, lib_hi): the engine library's mappings. A block whose
 * call reaches the helper directly (rel32) lies within 2 GiB of the library, so it reaches one of the two
 * stubs (or vn_tb_enter itself); a far call goes through a pointer in the block's own constant pool. */
void vn_set_tb_entry(void *check, uint64_t lib_lo, uint64_t lib_hi) {
    real_check = check;
    vn_real_check_exit = (void (*)(void *, int))check;
    if (stub_count == 0) {
        uint8_t *lo = make_stub((uintptr_t)lib_lo, 1), *hi = make_stub((uintptr_t)lib_hi, 0);
        if (lo)
            stubs[stub_count++] = lo;
        if (hi)
            stubs[stub_count++] = hi;
    }
}

/* Tests: move where a block's host code is expected to start (non-zero: the next block's layout check fails). */
uint64_t vn_tb_entry_shift(int64_t delta) {
    tb_code_off += (uint64_t)delta;
    return tb_code_off;
}

static uint8_t *entry_near(const uint8_t *from) {
    uint8_t *direct = (uint8_t *)(uintptr_t)vn_tb_enter;
    if (reach(from, direct))
        return direct;
    for (int i = 0; i < stub_count; i++)
        if (reach(from, stubs[i]))
            return stubs[i];
    return 0;
}

/* Where the engine's handle is loaded (the entry check's first instruction): the xor zeroing the flag follows
 * at the offset returned (0: neither form). TCG loads a constant pointer with a 7-byte `lea disp32(%rip)` when
 * it lies within 2 GiB of the code -- the engine handle does in an engine made in a thread, whose allocations
 * come from glibc's per-thread arena next to the code buffer -- and with a 10-byte movabs otherwise. */
static int handle_load(const uint8_t *code, const void *uc) {
    int32_t rel;
    if (code[0] == 0x48 && code[1] == 0xBF && memcmp(code + 2, &uc, 8) == 0)
        return 10;                                        /* movabs $uc, %rdi */
    if (code[0] != 0x48 || code[1] != 0x8D || code[2] != 0x3D)
        return 0;
    memcpy(&rel, code + 3, 4);                            /* lea rel(%rip), %rdi */
    return (uintptr_t)code + 7 + (uintptr_t)(intptr_t)rel == (uintptr_t)uc ? 7 : 0;
}

/* 0 when the block now enters vn_tb_enter, else why it was left untouched (VN_PATCH_*, vn_state.h). The
 * engine handle operand becomes the vCPU's state, tagged with bit 0 (vn_tb_enter tells a block start from
 * the block's other exit-request checks by it: those keep the engine handle, and in the far form they may
 * share the pool entry that now points at vn_tb_enter). The call ends `at` + 7 bytes into the block in both
 * call forms, so a block's entry call returns s->tb_back bytes past its TranslationBlock: the handle's load
 * is the same for every block of an engine (neither the handle nor its code buffer moves). */
static int patch(vn_state *s, uint8_t *tb, uint64_t pc) {
    uint8_t *code;
    uint64_t tb_pc, code_size;
    int32_t rel, disp = 0;
    if (!tb || !real_check)
        return VN_PATCH_NO_TB;
    memcpy(&tb_pc, tb + VN_TB_PC, 8);
    memcpy(&code, tb + VN_TB_CODE, 8);
    memcpy(&code_size, tb + VN_TB_CODE + 8, 8);
    if (tb_pc != pc || code <= tb || code - tb > 4096 || ((uintptr_t)s & 1))
        return VN_PATCH_PC;
    uint64_t off = (uint64_t)(code - tb);
    if (tb_code_off != 0 && off != tb_code_off)
        return VN_PATCH_LAYOUT;
    int at = handle_load(code, s->uc);
    if (at == 0 || code[at] != 0x33 || code[at + 1] != 0xF6)
        return VN_PATCH_BYTES;
    uint8_t *end = code + at + 7;  /* where the (rewritten) call ends */
    uint64_t back = off + (uint64_t)at + 7;
    if (s->tb_back != 0 && back != s->tb_back)
        return VN_PATCH_LAYOUT;
    uint64_t arg = (uint64_t)(uintptr_t)s | 1;
    if (at == 7) {  /* the lea must reach the tagged state instead */
        int64_t d = (int64_t)(arg - (uint64_t)(uintptr_t)(code + 7));
        if (d != (int32_t)d)
            return VN_PATCH_STATE_REACH;
        disp = (int32_t)d;
    }
    if (code[at + 2] == 0xE8) {  /* call rel32 */
        memcpy(&rel, code + at + 3, 4);
        if ((uintptr_t)end + (uintptr_t)(intptr_t)rel != (uintptr_t)real_check)
            return VN_PATCH_CALLEE;
        uint8_t *entry = entry_near(end);
        if (!entry)
            return VN_PATCH_REACH;
        int32_t nrel = (int32_t)(entry - end);
        memcpy(code + at + 3, &nrel, 4);
    } else if (code[at + 2] == 0xFF && code[at + 3] == 0x15) {  /* call *rel32(%rip): the target in the pool */
        uint8_t *slot, *callee;
        memcpy(&rel, code + at + 4, 4);
        if (rel < 0 || (uint64_t)(end + 1 - code) + (uint64_t)rel + 8 > code_size)
            return VN_PATCH_POOL;
        slot = end + 1 + rel;
        memcpy(&callee, slot, 8);
        if (callee != (uint8_t *)real_check)
            return VN_PATCH_CALLEE;
        /* xor %esi,%esi; call *slot(%rip)  ->  nop; call *slot(%rip); nop  (the call ends where the near form's
         * does; vn_tb_enter passes flag 0 on itself) */
        uint8_t insn[8] = {0x90, 0xFF, 0x15, 0, 0, 0, 0, 0x90};
        int32_t nrel = (int32_t)(slot - end);
        uint64_t entry = (uint64_t)(uintptr_t)vn_tb_enter;
        memcpy(insn + 3, &nrel, 4);
        memcpy(code + at, insn, 8);
        memcpy(slot, &entry, 8);
    } else {
        return VN_PATCH_CALLEE;
    }
    if (at == 10)
        memcpy(code + 2, &arg, 8);
    else
        memcpy(code + 3, &disp, 4);
    s->tb_back = back;
    tb_code_off = off;
    s->tb_patched++;
    return 0;
}

/* From vn_tb_gen_code, for a block the running vCPU's engine just translated. */
void vn_patch_block(vn_state *s, void *tb, uint64_t pc) {
    int why = patch(s, (uint8_t *)tb, pc);
    if (why == 0)
        return;
    s->tb_patch = 0;
    s->tb_patch_failed = (uint64_t)why;
    s->stop(s->uc);  /* the block's own (unpatched) check sees it: it leaves before running */
}
