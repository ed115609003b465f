/* The vCPU hot path that must not run in Python (docs/architecture.md, "machine").
 *
 * One `vn_state` per vCPU, passed as user_data to two Unicorn hooks:
 *  - vn_block (UC_HOOK_BLOCK, every address -- or, with the engine watch, vn_tb_enter at the start of every
 *    patched translation block, with no hook): the deterministic clock (executed bytes; stops the
 *    engine when the slice budget is used up) and RDMSR/WRMSR site discovery: the first time a block
 *    starts on (or runs into) a virtual page, the page is searched for 0F 30 / 0F 32; if it holds
 *    candidates the block is abandoned before it runs (RIP rewritten to itself) and the engine stops
 *    so the machine can hook the sites first.
 *  - vn_site (UC_HOOK_CODE at one candidate site): records that the MSR instruction is about to run,
 *    so the hook on the following instruction knows it was reached from there.
 * and, further down: the guest page walk the hooks read through (guest_pa / read_virt), vn_pause (from
 * vn_svm_check, or a code hook without the engine watch), vn_stub (code hook), the interrupt-window check
 * and vn_rdtsc (RDTSC). The engine's redirected functions (store watch, fast stores, translation hook
 * filter, PAUSE) are in engine_watch.c. Engine entry points arrive as function pointers: nothing is linked.
 */
#include "vn_state.h"
#include <stddef.h>

static uint64_t *slot(vn_state *s, uint64_t key) {
    uint64_t h = (key * 0x9E3779B97F4A7C15ULL) & s->table_mask;
    while (s->table[h] != 0 && s->table[h] != key)
        h = (h + 1) & s->table_mask;
    return &s->table[h];
}

int vn_contains(vn_state *s, uint64_t page) {
    return *slot(s, (page >> 12) + 1) != 0;
}

int vn_insert(vn_state *s, uint64_t page) {
    uint64_t key = (page >> 12) + 1;
    uint64_t *p = slot(s, key);
    if (*p == 0) {
        if (s->table_used * 4 >= s->table_mask * 3)
            return -1;
        *p = key;
        s->table_used++;
    }
    return 0;
}

void vn_remove(vn_state *s, uint64_t page) {
    /* open addressing: rebuild the table without the page (rare: code was rewritten) */
    uint64_t key = (page >> 12) + 1, n = s->table_mask + 1;
    uint64_t *p = slot(s, key);
    if (*p == 0)
        return;
    *p = 0;
    s->table_used--;
    s->last_page = s->hot = 0;
    uint64_t h = (p - s->table + 1) & s->table_mask;
    while (s->table[h] != 0 && n--) {
        uint64_t k = s->table[h];
        s->table[h] = 0;
        s->table_used--;
        *slot(s, k) = k;
        s->table_used++;
        h = (h + 1) & s->table_mask;
    }
}

void vn_clear(vn_state *s) {
    memset(s->table, 0, (s->table_mask + 1) * sizeof(uint64_t));
    s->table_used = 0;
    s->last_page = s->hot = 0;
}

/* Guest-virtual reads for the hooks, by a page walk over guest RAM (SDM vol. 3 §4.5, 4-level; 1 GiB and
 * 2 MiB pages) -- never through the engine: a failed uc_vmem_read/uc_vmem_translate writes the address
 * into the guest's CR2 and leaves a #PF pending, which the guest then takes at an innocent instruction
 * (measured, Unicorn 2.1.4). Paging without PAE (never used by a 64-bit guest) still asks the engine. */
static int guest_pa(void *uc, vn_state *s, uint64_t va, uint64_t *pa) {
    uint64_t cr0 = 0, cr3 = 0, cr4 = 0, ram = s->code_map_pages << 12;
    s->reg_read(uc, s->cr0_reg, &cr0);
    if (!(cr0 & 0x80000000ULL)) {
        *pa = va & 0xFFFFFFFFULL;
        return 0;
    }
    s->reg_read(uc, s->cr4_reg, &cr4);
    if (!(cr4 & 0x20) || !s->host_ram) {
        s->engine_reads++;
        return s->vmem_translate(uc, va, s->prot_read, pa) == 0 ? 0 : -1;
    }
    if ((uint64_t)((int64_t)(va << 16) >> 16) != va)
        return -1;  /* not canonical */
    s->reg_read(uc, s->cr3_reg, &cr3);
    uint64_t table = cr3 & 0x000FFFFFFFFFF000ULL;
    for (int level = 0, shift = 39; level < 4; level++, shift -= 9) {
        uint64_t at = table + ((va >> shift) & 0x1FF) * 8, e;
        if (at + 8 > ram)
            return -1;
        memcpy(&e, (const uint8_t *)(uintptr_t)s->host_ram + at, 8);
        if (!(e & 1))
            return -1;
        if ((level == 1 || level == 2) && (e & 0x80)) {
            uint64_t size = 1ULL << shift;
            *pa = (e & 0x000FFFFFFFFFF000ULL & ~(size - 1)) | (va & (size - 1));
            return 0;
        }
        table = e & 0x000FFFFFFFFFF000ULL;
    }
    *pa = table | (va & 0xFFF);
    return 0;
}

/* n bytes at guest-virtual va (within one page) from guest RAM; -1 when unmapped or not RAM. */
static int read_virt(void *uc, vn_state *s, uint64_t va, uint8_t *out, uint64_t n) {
    uint64_t pa;
    if (n == 0 || (va & 0xFFF) + n > 0x1000 || guest_pa(uc, s, va, &pa) != 0 || pa + n > s->code_map_pages << 12)
        return -1;
    memcpy(out, (const uint8_t *)(uintptr_t)s->host_ram + pa, n);
    return 0;
}

/* 1 if the page has candidate sites, 0 if not (or unreadable); the page is entered in the table. */
__attribute__((noinline)) static int scan_page(void *uc, vn_state *s, uint64_t page) {
    uint8_t buf[4097];
    s->pages_scanned++;
    if (read_virt(uc, s, page, buf, 4096) != 0)
        return 0;  /* not mapped now: the fetch faults; scanned again when it is mapped */
    if (read_virt(uc, s, page + 4096, buf + 4096, 1) != 0)
        buf[4096] = 0;
    if (vn_insert(s, page) != 0) {
        s->stop_reason = STOP_TABLE_FULL;
        return 1;
    }
    uint64_t pa = ~0ULL;
    if (guest_pa(uc, s, page, &pa) == 0 && (pa >> 12) < s->code_map_pages
        && !(s->defer_map[pa >> 18] & (1ULL << ((pa >> 12) & 63))))
        s->code_map[pa >> 18] |= 1ULL << ((pa >> 12) & 63);  /* watched from now on (vn_write) */
    if (s->new_code_count < 1024) {
        s->new_code[s->new_code_count] = page;
        s->new_code_pa[s->new_code_count] = pa & ~0xFFFULL;
    }
    s->new_code_count++;
    if (s->stub_len && s->stub_len <= sizeof s->stub_sig && memcmp(buf, s->stub_sig, s->stub_len) == 0)
        return 1;  /* our hypercall page (viridian/machine/stubs.py, given at set-up) */
    for (int i = 0; i < 4096; i++)
        if ((buf[i] == 0x0F && (buf[i + 1] == 0x30 || buf[i + 1] == 0x32))
            || (!s->pause_native && buf[i] == 0xF3 && buf[i + 1] == 0x90))
            return 1;
    for (int i = 0; i + 3 < 4096; i++)  /* MOV to/from CR8: REX.R, 0F 20/22, ModRM 11 000 rrr */
        if ((buf[i] & 0xF4) == 0x44 && buf[i + 1] == 0x0F && (buf[i + 2] == 0x20 || buf[i + 2] == 0x22)
            && (buf[i + 3] & 0xF8) == 0xC0)
            return 1;
    return 0;
}

static int check_page(void *uc, vn_state *s, uint64_t page, uint64_t block) {
    if (s->last_page == page + 1 || vn_contains(s, page)) {
        s->last_page = page + 1;
        return 0;
    }
    if (!scan_page(uc, s, page))
        return 0;
    if (s->stop_reason != STOP_TABLE_FULL)
        s->stop_reason = STOP_NEW_SITES;
    s->new_page = page;
    (void)block;  /* the exit request set by stop() is checked before the block body runs */
    s->stop(uc);
    return 1;
}

__attribute__((noinline)) static void block_slow(void *uc, uint64_t address, uint32_t size, vn_state *s) {
    uint64_t first = address & ~0xFFFULL, last = (address + (size ? size - 1 : 0)) & ~0xFFFULL;
    if (check_page(uc, s, first, address) || (last != first && check_page(uc, s, last, address))) {
        s->pend_valid = s->hot = 0;
        return;
    }
    if (last == first)
        s->last_page = first + 1;
    if (s->bytes >= s->limit || (s->exact && s->bytes + size > s->limit)) {
        /* the clock reached the budget: stop before this block, which is not counted (the clock counts the
         * bytes of instructions that ran, whatever path entered the block -- engine_build.py); in a replay's
         * exact run also before a block that would pass it (the hot paths above need bytes + size < limit) */
        s->limit = ~0ULL;
        if (s->stop_reason == STOP_NONE)
            s->stop_reason = STOP_BUDGET;
        s->pend_valid = s->hot = 0;
        s->stop(uc);
        return;
    }
    s->bytes += size;
    s->blocks++;
}

static int window_block(void *uc, uint64_t address, vn_state *s);

/* The clock counts bytes of instructions that ran, whatever path entered their block (engine_build.py): a
 * block is counted when it starts, so when the engine (or an exception) leaves it at rip inside it, the bytes
 * from rip on are taken back -- they run, and count, in a later block. rip = ~0: read RIP here. */
uint64_t vn_settle(void *uc, vn_state *s, uint64_t rip) {
    if (rip == ~0ULL)
        s->reg_read(uc, s->rip_reg, &rip);
    if (s->pend_valid && rip >= s->block_start && rip <= s->pend_end) {
        s->bytes -= s->pend_end + 1 - rip;
        if (rip == s->block_start)
            s->pend_valid = s->hot = 0;  /* none of it ran */
        else
            s->pend_end = rip - 1;       /* the last byte that ran (the STI-shadow test reads it) */
    }
    return rip;
}

/* A block was just translated for a vCPU with block entry (engine_watch.c vn_tb_gen_code): its pages are
 * searched for sites now, as vn_block does at a block's first run -- a page with candidates stops the engine,
 * so the block's entry check leaves before it runs and the machine hooks the sites (dropping the page's
 * translations) first. Every patched block that runs was translated, so vn_tb_enter checks no pages. */
void vn_scan_block(vn_state *s, uint64_t pc, uint32_t size) {
    uint64_t first = pc & ~0xFFFULL, last = (pc + (size ? size - 1 : 0)) & ~0xFFFULL;
    if (!check_page(s->uc, s, first, pc) && last != first)
        check_page(s->uc, s, last, pc);
}

/* A block starts (from vn_block or vn_tb_enter): the clock, the interrupt window, site discovery. */
static inline __attribute__((always_inline)) void block_enter(void *uc, vn_state *s, uint64_t address,
                                                              uint32_t size) {
    if (__builtin_expect(vn_code_hooks_cut != 0, 0))
        vn_restore_code_hooks();  /* a translation faulted out with the hook list cut (engine_watch.c) */
    uint64_t first = address & ~0xFFFULL;
    if (s->pend_valid)
        s->last_ran_end = s->pend_end;
    s->block_start = address;
    s->pend_end = address + size - 1;
    s->pend_valid = 1;
    if (__builtin_expect(s->window_active != 0, 0) && window_block(uc, address, s)) {
        s->pend_valid = s->hot = 0;
        return;
    }
    /* hot path: same page as the last block, block inside it, budget left */
    if (__builtin_expect(s->last_page == first + 1 && ((address + size - 1) & ~0xFFFULL) == first
                         && s->bytes + size < s->limit, 1)) {
        s->bytes += size;
        s->blocks++;
    } else {
        block_slow(uc, address, size, s);
        if (!s->pend_valid)
            return;  /* abandoned (block_slow cleared hot) */
    }
    /* the next block may be counted in vn_tb_enter alone: nothing to restore, no window (its pages were
     * scanned when it was translated, vn_scan_block) */
    s->hot = !s->window_active && !vn_code_hooks_cut;
}

void vn_block(void *uc, uint64_t address, uint32_t size, void *user) {
    block_enter(uc, (vn_state *)user, address, size);
}

/* Every patched translation block starts with a call here instead of the engine's exit-request check
 * (engine_watch.c, "block entry"), with this vCPU's state in place of the engine handle. The engine's
 * check comes first -- a block the engine is about to leave neither runs nor counts, as with a block hook
 * -- then what vn_block does, for the block found from the return address (the call ends s->tb_back bytes
 * past its TranslationBlock); when that stops the engine, the engine's check runs as a tail call, so it
 * sees the block's return address and leaves with RIP at the block's start. The state comes tagged with bit 0;
 * an untagged argument is the engine handle of one of the block's other checks (block_entry.c). */
void (*vn_real_check_exit)(void *uc, int flag);

/* Only tail calls below (a leaf on the hot path; the engine's check must see the block's return address). */
__attribute__((noinline)) static void tb_enter_slow(vn_state *s, int flag, uint64_t pc, uint32_t size) {
    block_enter(s->uc, s, pc, size);
    if (*s->exit_request < 0) {
        /* block_enter stopped the engine before this block: leave with RIP at its start. The engine's check
         * finds the PC from the return address; after a hook dropped the translations (a page MSR moving an
         * overlay onto the running code page) it did not (measured: RIP stayed at the hooked jmp before this
         * block, which ran and counted again). The RIP write marks the PC for that exit (engine.py). */
        if (!s->pend_valid)
            s->reg_write(s->uc, s->rip_reg, &pc);
        vn_real_check_exit(s->uc, flag);
    }
}

void vn_tb_enter(void *arg, int flag) {
    if (__builtin_expect(!((uintptr_t)arg & 1), 0)) {  /* an engine handle: a check inside a block */
        vn_real_check_exit(arg, flag);
        return;
    }
    vn_state *s = (vn_state *)((uintptr_t)arg - 1);
    flag = 0;  /* a block start (the far form's rewrite drops the operand's zeroing) */
    if (__builtin_expect(*s->exit_request < 0, 0)) {
        vn_real_check_exit(s->uc, flag);
        return;
    }
    const uint8_t *tb = (const uint8_t *)__builtin_return_address(0) - s->tb_back;
    uint64_t pc, end;
    uint16_t size;
    memcpy(&pc, tb + VN_TB_PC, 8);
    memcpy(&size, tb + VN_TB_SIZE, 2);
    end = pc + size - 1;
    /* block_enter's hot path, inline: the last block counted left hot (nothing to restore, no window; the
     * pages were scanned at translation), budget left; whatever clears pend_valid clears hot */
    if (__builtin_expect(s->hot && s->bytes + size < s->limit, 1)) {
        s->last_ran_end = s->pend_end;
        s->block_start = pc;
        s->pend_end = end;
        s->bytes += size;
        s->blocks++;
        return;
    }
    tb_enter_slow(s, flag, pc, size);
}

/* An MSR (0F 30 / 0F 32, optionally after one prefix byte) or MOV CR8 (REX.R 0F 20/22 11-000-rrr) here? */
static int is_site(const uint8_t *b) {
    if (b[0] == 0x0F && (b[1] == 0x30 || b[1] == 0x32))
        return 1;
    if (b[1] == 0x0F && (b[2] == 0x30 || b[2] == 0x32))
        return 1;
    return (b[0] & 0xF4) == 0x44 && b[1] == 0x0F && (b[2] == 0x20 || b[2] == 0x22) && (b[3] & 0xF8) == 0xC0;
}

void vn_site(void *uc, uint64_t address, uint32_t size, void *user) {
    vn_state *s = (vn_state *)user;
    uint8_t b[4] = {0, 0, 0, 0};
    (void)size;
    /* a hook left behind on code that has since been rewritten is not a site any more; a site ending its
     * page may have nothing mapped after it */
    uint64_t room = 0x1000 - (address & 0xFFF);
    /* read_virt stays within the page (and never asks the engine, see guest_pa) */
    s->pending_len = 0;
    if (room < 4 || read_virt(uc, s, address, b, 4) != 0) {
        s->pending_site = address;  /* cannot check: keep the hook's word */
        return;
    }
    s->pending_site = is_site(b) ? address : 0;
    if (b[0] == 0x0F && b[1] == 0x32)
        s->pending_len = 2;
    else if (b[1] == 0x0F && b[2] == 0x32 && (b[0] == 0x66 || (b[0] & 0xF0) == 0x40))
        s->pending_len = 3;  /* RDMSR after an operand-size or REX prefix (both ignored, SDM vol. 2B) */
}

/* UC_HOOK_CODE on the instruction after each MSR site (the engine executed the RDMSR/WRMSR, reading 0 or
 * dropping the write -- Unicorn cannot trap them). The hot reads with no state to model are answered here
 * once the machine has entered them in native_msrs (offered -- the model answered the first read -- on record,
 * no --trace/--fast): TIME_REF_COUNT (TLFS §12.4: 100 ns units through the reference-TSC-page formula, as
 * Python's page_time) and IA32_MPERF/APERF (SDM vol. 4: the partition TSC plus the MSR's offset, as
 * msr/arch.py). Each is accounted like an exit (EXIT_TICKS, the partition clock raised as vn_rdtsc does) and
 * counted for the machine to collect. Every other arrival from a site goes to the machine's handler
 * (msr_slow); others return. */
void vn_msr_done(void *uc, uint64_t address, uint32_t size, void *user) {
    vn_state *s = (vn_state *)user;
    uint64_t site = s->pending_site, rcx = 0;
    if (!site || (address - site != 2 && address - site != 3))
        return;
    if (s->native_msr_count && s->pending_len == address - site) {
        s->reg_read(uc, s->rcx_reg, &rcx);
        for (uint64_t i = 0; i < s->native_msr_count && i < VN_NATIVE_MSRS; i++) {
            if (s->native_msrs[i].index != (uint32_t)rcx)
                continue;
            s->pending_site = 0;
            s->bytes += s->exit_ticks;
            uint64_t now = s->bytes + s->tsc_base, value;
            if ((int64_t)(now - s->tsc_floor) < 0)
                now = s->tsc_floor;
            s->tsc_floor = now;
            if (s->native_msrs[i].kind == VN_MSR_REFERENCE)
                value = (uint64_t)(((unsigned __int128)now * s->ref_scale) >> 64) + s->ref_offset;
            else
                value = now + s->native_msrs[i].offset;
            uint64_t lo = value & 0xFFFFFFFFULL, hi = value >> 32;
            s->reg_write(uc, s->rax_reg, &lo);
            s->reg_write(uc, s->rdx_reg, &hi);
            s->native_msrs[i].reads++;
            s->native_reads++;
            return;
        }
    }
    s->msr_slow(uc, address, size, 0);
}

/* A PAUSE (F3 90) executes: count it and apply pause-loop exiting. Called from vn_svm_check (engine_watch.c)
 * or, without the engine watch, as a UC_HOOK_CODE at each PAUSE site. */
void vn_pause(void *uc, uint64_t address, uint32_t size, void *user) {
    vn_state *s = (vn_state *)user;
    (void)address; (void)size;
    s->pauses++;
    uint64_t now = s->bytes;
    if (now - s->pause_last > s->ple_gap)
        s->pause_loop_start = now;
    s->pause_last = now;
    if (s->ple_window && now - s->pause_loop_start > s->ple_window) {
        s->pause_loop_start = now;
        if (s->ple_quiet) {  /* the exit as the machine accounts it (Vcpu.count_exit): EXIT_TICKS, the partition
                                clock brought up to this vCPU (as vn_rdtsc raises it) -- and nothing else */
            s->bytes += s->exit_ticks;
            uint64_t t = s->bytes + s->tsc_base;
            if ((int64_t)(t - s->tsc_floor) > 0)
                s->tsc_floor = t;
            s->ple_exits++;
            return;
        }
        s->stop_reason = STOP_PAUSE;
        s->stop(uc);
    }
}

/* UC_HOOK_CODE in our hypercall page, ahead of the machine's Python hook: the one call that is hot and has
 * no effect to model -- fast HvCallNotifyLongSpinWait (input value exactly 0x10008, CPL 0) when the machine
 * has said no yield can happen (every vCPU has a CPU) and the call is offered -- completes here with
 * HV_STATUS_SUCCESS, like KVM completes hypercalls in the kernel. Everything else goes to Python. */
void vn_stub(void *uc, uint64_t address, uint32_t size, void *user) {
    vn_state *s = (vn_state *)user;
    uint64_t rcx = 0, cs = 0, zero = 0;
    (void)size;
    s->fast_done_at = 0;
    if (!s->fast_spin_ok)
        return;
    s->reg_read(uc, s->rcx_reg, &rcx);
    if (rcx != s->spin_control)  /* 0x10008: code 0x0008, fast (set from the model) */
        return;
    s->reg_read(uc, s->cs_reg, &cs);
    if (cs & 3)
        return;
    s->reg_write(uc, s->rax_reg, &zero);
    s->fast_spin_count++;
    s->bytes += s->exit_ticks;  /* the exit as Vcpu.count_exit accounts it: EXIT_TICKS, and the partition clock */
    uint64_t t = s->bytes + s->tsc_base;  /* brought up to this vCPU (as vn_pause; the machine collects it) */
    if ((int64_t)(t - s->tsc_floor) > 0)
        s->tsc_floor = t;
    s->fast_done_at = address;
}

/* The interrupt window, checked at block starts (from vn_block while window_active): QEMU ends a translation
 * block after STI, POPF and IRET, the only instructions that set RFLAGS.IF, so IF can only have become 1 at a
 * block start. The first boundary there is in the STI shadow when the block that just ran ended with STI
 * (0xFB); QEMU translates the block that starts in the shadow as that one instruction (HF_INHIBIT_IRQ ends
 * it), so the next block start is the first boundary that can take the interrupt (SDM vol. 2B "STI"). */
static int window_block(void *uc, uint64_t address, vn_state *s) {
    uint64_t rflags = 0;
    int first = (int)s->window_first, shadow = 0;
    uint8_t insn = 0;
    s->window_first = 0;
    s->reg_read(uc, s->rflags_reg, &rflags);
    if (!(rflags & 0x200)) {
        s->window_prev_if = 0;
        return 0;
    }
    if (first)
        shadow = (int)s->window_shadow;
    else if (!s->window_prev_if)
        shadow = read_virt(uc, s, s->last_ran_end, &insn, 1) == 0 && insn == 0xFB;
    s->window_prev_if = 1;
    if (shadow)
        return 0;  /* the one shadowed instruction runs; the block after it is checked */
    if (s->pending_site && address - s->pending_site >= 2 && address - s->pending_site <= 4)
        return 0;
    for (uint64_t i = 0; i < s->stub_count && i < 8; i++)
        if (s->stub_at[i] == address)
            return 0;
    s->window_open_at = address;
    s->stop_reason = STOP_WINDOW;
    s->stop(uc);
    return 1;
}

/* 1 if the block that ran last ended with STI (0xFB): the boundary after it is in the interrupt shadow. */
int vn_after_sti(void *uc, vn_state *s) {
    uint8_t insn = 0;
    return s->last_ran_end && read_virt(uc, s, s->last_ran_end, &insn, 1) == 0 && insn == 0xFB;
}

/* UC_HOOK_INSN for RDTSC (SDM vol. 2B "RDTSC"; returning 1 skips the engine's own): EDX:EAX = the vCPU's
 * TSC, computed as Python would (Machine.sync_clock + ArchMsrState.guest_tsc), the exit accounted like one
 * (EXIT_TICKS) and counted for the machine. Installed only when every exit need not be seen one by one
 * (no --trace, no --fast). A Linux AP calibrating its delay loop reads the TSC ~150,000 times. */
int vn_rdtsc(void *uc, void *user) {
    vn_state *s = (vn_state *)user;
    s->bytes += s->exit_ticks;
    uint64_t now = s->bytes + s->tsc_base;
    if ((int64_t)(now - s->tsc_floor) < 0)
        now = s->tsc_floor;
    s->tsc_floor = now;
    uint64_t t = now + s->tsc_offset, lo = t & 0xFFFFFFFFULL, hi = t >> 32;
    s->reg_write(uc, s->rax_reg, &lo);
    s->reg_write(uc, s->rdx_reg, &hi);
    s->rdtsc_count++;
    return 1;
}

/* UC_HOOK_INSN for RDTSCP (SDM vol. 2B "RDTSCP"): as vn_rdtsc, and ECX = IA32_TSC_AUX[31:0], which the engine
 * keeps (the guest writes it natively). Linux's TSC-page clocksource reads the TSC with RDTSCP. */
int vn_rdtscp(void *uc, void *user) {
    vn_state *s = (vn_state *)user;
    struct { uint32_t rid; uint64_t value; } aux = {0xC0000103u, 0};  /* uc_x86_msr */
    vn_rdtsc(uc, user);
    s->reg_read(uc, s->msr_reg, &aux);
    uint64_t ecx = aux.value & 0xFFFFFFFFULL;
    s->reg_write(uc, s->rcx_reg, &ecx);
    return 1;
}

/* UC_HOOK_INSN for IN and OUT: the console's two hot accesses are answered here, accounted like exits (the
 * machine collects the counts and the bytes after the run, and before it handles any port itself, so the
 * serial log keeps its order): a byte read of COM1's LSR (0x60, THR empty and transmitter empty: the 16550
 * model transmits instantly, ports.py) and a byte write of THR while LCR.DLAB is 0. Everything else goes to
 * the machine's handlers. A Linux console prints each character with one of each (~44k per boot). */
uint32_t vn_in(void *uc, uint32_t port, int size, void *user) {
    vn_state *s = (vn_state *)user;
    if (port == s->com1_base + 5 && size == 1 && s->com1_base) {
        s->bytes += s->exit_ticks;
        s->io_last = s->bytes;
        s->lsr_reads++;
        return (uint32_t)s->lsr_idle;  /* THRE | TEMT (set from the UART model) */
    }
    return s->io_in_slow(uc, port, size, 0);
}

void vn_out(void *uc, uint32_t port, int size, uint32_t value, void *user) {
    vn_state *s = (vn_state *)user;
    if (port == s->com1_base && size == 1 && s->com1_base && s->thr_native && s->serial_len < VN_SERIAL_BUF) {
        s->bytes += s->exit_ticks;
        s->io_last = s->bytes;
        s->serial_buf[s->serial_len++] = (uint8_t)value;
        return;
    }
    s->io_out_slow(uc, port, size, value, 0);
}

/* native.py checks its mirror of vn_state against these when it loads the library: the size, then the offsets
 * of fields spread over the structure (-1 past the last). */
int64_t vn_layout(int which) {
    static const uint64_t at[] = {sizeof(vn_state), offsetof(vn_state, bytes), offsetof(vn_state, exit_request),
                                  offsetof(vn_state, table), offsetof(vn_state, new_code),
                                  offsetof(vn_state, ram_ranges), offsetof(vn_state, tb_map),
                                  offsetof(vn_state, serial_buf), offsetof(vn_state, msr_slow),
                                  offsetof(vn_state, native_msrs), offsetof(vn_state, hix_tail),
                                  offsetof(vn_state, ple_exits), offsetof(vn_state, stub_sig)};
    return which >= 0 && which < (int)(sizeof at / sizeof at[0]) ? (int64_t)at[which] : -1;
}
