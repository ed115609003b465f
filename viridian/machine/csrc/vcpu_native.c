/* The vCPU hot path that must not run in Python (docs/architecture.md, "machine").
 *
 * One `vn_state` per vCPU, passed as user_data to two Unicorn hooks:
 *  - vn_block (UC_HOOK_BLOCK, every address): the deterministic clock (executed bytes; stops the
 *    engine when the slice budget is used up) and RDMSR/WRMSR site discovery: the first time a block
 *    starts on (or runs into) a virtual page, the page is searched for 0F 30 / 0F 32; if it holds
 *    candidates the block is abandoned before it runs (RIP rewritten to itself) and the engine stops
 *    so the machine can hook the sites first.
 *  - vn_site (UC_HOOK_CODE at one candidate site): records that the MSR instruction is about to run,
 *    so the hook on the following instruction knows it was reached from there.
 * and, further down: vn_pause / vn_stub / vn_window (code hooks), vn_rdtsc (RDTSC), and the code-coherence
 * store watch vn_tbipf (or its fallback, the write hook vn_write).
 * Engine entry points arrive as function pointers, so this file links against nothing.
 */
#include <stdint.h>
#include <string.h>

typedef int (*stop_fn)(void *uc);
typedef int (*reg_write_fn)(void *uc, int regid, const void *value);
typedef int (*reg_read_fn)(void *uc, int regid, void *value);
typedef int (*vmem_read_fn)(void *uc, uint64_t address, int prot, void *bytes, size_t size);
typedef int (*vmem_translate_fn)(void *uc, uint64_t address, int prot, uint64_t *paddress);

enum { STOP_NONE = 0, STOP_BUDGET = 1, STOP_NEW_SITES = 2, STOP_TABLE_FULL = 3, STOP_PAUSE = 4, STOP_WINDOW = 5,
       STOP_WINDOW_SHADOW = 6 };

typedef struct {
    uint64_t bytes;         /* guest code bytes executed (the clock) */
    uint64_t limit;         /* stop once bytes >= limit */
    uint64_t blocks;        /* blocks executed */
    uint64_t pending_site;  /* address of the MSR instruction about to execute, 0 = none */
    uint64_t stop_reason;
    uint64_t new_page;      /* page holding new candidate sites (STOP_NEW_SITES) */
    uint64_t pages_scanned;
    uint64_t last_page;     /* one-entry cache of the last page found in the table, +1 */
    stop_fn stop;
    reg_write_fn reg_write;
    vmem_read_fn vmem_read;
    uint64_t *table;        /* open-addressing set of (page number + 1), 0 = empty */
    uint64_t table_mask;    /* capacity - 1 (power of two) */
    uint64_t table_used;
    int rip_reg;
    int prot_read;
    uint64_t pauses;        /* PAUSE instructions executed */
    uint64_t ple_gap;       /* pause-loop exiting (Intel PLE): PAUSEs at most ple_gap ticks apart form a loop */
    uint64_t ple_window;    /* ... that exits once it has spun for more than ple_window ticks; 0 = off */
    uint64_t pause_last;
    uint64_t pause_loop_start;
    uint64_t new_code[1024];  /* pages first seen executing since the machine last drained them */
    uint64_t new_code_count; /* > 1024: overflowed (later pages are not tracked) */
    uint64_t dirty_code[64]; /* physical code pages this vCPU wrote since the last drain (vn_write, vn_tbipf) */
    uint64_t dirty_count;    /* > 64: overflowed */
    reg_read_fn reg_read;
    uint64_t fast_spin_ok;   /* the machine allows NotifyLongSpinWait to complete here (see vn_stub) */
    uint64_t fast_spin_count;
    uint64_t fast_done_at;   /* address of the stub hook this call was completed at (the Python hook skips) */
    uint64_t exit_ticks;
    int rcx_reg, rax_reg, cs_reg, rflags_reg;
    uint64_t window_shadow;  /* the instruction before the next boundary was STI (interrupt shadow) */
    uint64_t window_open_at; /* vn_window stopped here: the first boundary with RFLAGS.IF = 1, no shadow */
    uint64_t stub_count;     /* addresses of the hypercall-page stub hooks (never stop there) */
    uint64_t stub_at[8];
    uint64_t window_active;  /* block-level interrupt-window check in vn_block (see window_block) */
    uint64_t window_first;   /* the next block start is the first since the window was armed */
    uint64_t window_prev_if; /* RFLAGS.IF at the previous block start */
    uint64_t block_start;    /* the block vn_block was last called for (a block-hook stop leaves RIP here) */
    uint64_t last_ran_end;   /* last byte of the last block that ran (STI ends a block: the shadow test) */
    uint64_t pend_end, pend_valid;
    uint64_t *code_map;      /* shared by every vCPU: bit per physical page some vCPU executed (and scanned) */
    uint64_t code_map_pages; /* guest RAM pages the map covers */
    vmem_translate_fn vmem_translate;
    uint64_t new_code_pa[1024]; /* the physical page behind each new_code entry */
    uint64_t code_writes;    /* stores that hit a page of code_map */
    uint64_t *defer_map;     /* shared: pages written since they last ran -- watched again only when the
                                machine syncs after the slice (bounds stops on pages mixing code and data) */
    uint64_t ram_count;      /* the engine's RAM blocks over guest RAM: [ram_addr, ram_addr + size) -> gpa */
    uint64_t ram_ranges[16][3];
    uint64_t tsc_base;       /* RDTSC natively (vn_rdtsc): partition time = bytes + tsc_base, at least */
    uint64_t tsc_floor;      /* ... tsc_floor (the partition clock; raised by every read) */
    uint64_t tsc_offset;     /* ... plus this vCPU's TSC offset (IA32_TSC / TSC_ADJUST writes) */
    uint64_t rdtsc_count;    /* reads answered here since the machine last collected them */
    int rdx_reg;
} vn_state;

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
    s->last_page = 0;
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
    s->last_page = 0;
}

/* 1 if the page has candidate sites, 0 if not (or unreadable); the page is entered in the table. */
__attribute__((noinline)) static int scan_page(void *uc, vn_state *s, uint64_t page) {
    uint8_t buf[4097];
    s->pages_scanned++;
    if (s->vmem_read(uc, page, s->prot_read, buf, 4096) != 0)
        return 0;  /* not mapped now: the fetch faults; scanned again when it is mapped */
    if (s->vmem_read(uc, page + 4096, s->prot_read, buf + 4096, 1) != 0)
        buf[4096] = 0;
    if (vn_insert(s, page) != 0) {
        s->stop_reason = STOP_TABLE_FULL;
        return 1;
    }
    uint64_t pa = ~0ULL;
    if (s->vmem_translate(uc, page, s->prot_read, &pa) == 0 && (pa >> 12) < s->code_map_pages
        && !(s->defer_map[pa >> 18] & (1ULL << ((pa >> 12) & 63))))
        s->code_map[pa >> 18] |= 1ULL << ((pa >> 12) & 63);  /* watched from now on (vn_write) */
    if (s->new_code_count < 1024) {
        s->new_code[s->new_code_count] = page;
        s->new_code_pa[s->new_code_count] = pa & ~0xFFFULL;
    }
    s->new_code_count++;
    static const uint8_t stub[11] = {0x48, 0xC7, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x1F, 0x40, 0x00};
    if (memcmp(buf, stub, sizeof stub) == 0)
        return 1;  /* our hypercall page (viridian/machine/stubs.py) */
    for (int i = 0; i < 4096; i++)
        if ((buf[i] == 0x0F && (buf[i + 1] == 0x30 || buf[i + 1] == 0x32)) || (buf[i] == 0xF3 && buf[i + 1] == 0x90))
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
        s->pend_valid = 0;
        return;
    }
    if (last == first)
        s->last_page = first + 1;
    s->bytes += size;
    s->blocks++;
    if (s->bytes >= s->limit) {
        s->limit = ~0ULL;
        if (s->stop_reason == STOP_NONE)
            s->stop_reason = STOP_BUDGET;
        s->pend_valid = 0;
        s->stop(uc);
    }
}

static int window_block(void *uc, uint64_t address, vn_state *s);

void vn_block(void *uc, uint64_t address, uint32_t size, void *user) {
    vn_state *s = (vn_state *)user;
    uint64_t first = address & ~0xFFFULL;
    if (s->pend_valid)
        s->last_ran_end = s->pend_end;
    s->block_start = address;
    s->pend_end = address + size - 1;
    s->pend_valid = 1;
    if (__builtin_expect(s->window_active != 0, 0) && window_block(uc, address, s)) {
        s->pend_valid = 0;
        return;
    }
    /* hot path: same page as the last block, block inside it, budget left */
    if (__builtin_expect(s->last_page == first + 1 && ((address + size - 1) & ~0xFFFULL) == first
                         && s->bytes + size < s->limit, 1)) {
        s->bytes += size;
        s->blocks++;
        return;
    }
    block_slow(uc, address, size, s);
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
    /* never read into the next page: a failed engine read sets the guest's CR2 and a pending #PF */
    if (room < 4 || s->vmem_read(uc, address, s->prot_read, b, 4) != 0) {
        s->pending_site = address;  /* cannot check: keep the hook's word */
        return;
    }
    s->pending_site = is_site(b) ? address : 0;
}

/* UC_HOOK_MEM_WRITE over guest RAM (Unicorn passes the physical address): a store into a page of code_map
 * -- code some vCPU translated -- is recorded and stops the engine, so the machine drops the page from the
 * other vCPUs' translation caches and rescans it for sites before anyone runs it again (this vCPU's own
 * cache is invalidated by the engine itself). Unicorn reports one call per store with its first byte's
 * address; a store running into the next page is taken to touch the next physical page. */
static void code_store(void *uc, vn_state *s, uint64_t address, uint64_t size) {
    uint64_t first = address >> 12, last = (address + (size ? size - 1 : 0)) >> 12;
    for (uint64_t p = first; p <= last && p < s->code_map_pages; p++) {
        uint64_t bit = 1ULL << (p & 63);
        if (!(s->code_map[p >> 6] & bit))
            continue;
        s->code_map[p >> 6] &= ~bit;
        if (s->dirty_count < 64)
            s->dirty_code[s->dirty_count] = p << 12;
        s->dirty_count++;
        s->code_writes++;
        s->stop(uc);
    }
}

void vn_write(void *uc, int type, uint64_t address, int size, int64_t value, void *user) {
    (void)type; (void)value;
    code_store(uc, (vn_state *)user, address, size > 0 ? (uint64_t)size : 0);
}

/* The store watch (viridian/machine/store_watch.py): the engine's PLT slot for tb_invalidate_phys_page_fast
 * -- called for every store into executable RAM with the store's RAM offset -- leads here first. The engine
 * handle identifies the vCPU (one runs at a time: a one-entry cache in front of the registry). */
typedef void (*tbipf_fn)(void *uc, void *pages, uint64_t start, int len, uintptr_t retaddr);
static tbipf_fn real_tbipf;
#define VN_MAX_ENGINES 4096
static void *reg_uc[VN_MAX_ENGINES];
static vn_state *reg_state[VN_MAX_ENGINES];
static void *last_uc;
static vn_state *last_state;

void vn_set_real_tbipf(void *fn) { real_tbipf = (tbipf_fn)fn; }

int vn_register(void *uc, vn_state *s) {
    int free_slot = -1;
    for (int i = 0; i < VN_MAX_ENGINES; i++) {
        if (reg_uc[i] == uc) { reg_state[i] = s; last_uc = 0; return 0; }
        if (!reg_uc[i] && free_slot < 0) free_slot = i;
    }
    if (free_slot < 0)
        return -1;
    reg_uc[free_slot] = uc;
    reg_state[free_slot] = s;
    last_uc = 0;
    return 0;
}

void vn_unregister(void *uc) {
    for (int i = 0; i < VN_MAX_ENGINES; i++)
        if (reg_uc[i] == uc) { reg_uc[i] = 0; reg_state[i] = 0; }
    last_uc = 0;
    last_state = 0;
}

void vn_tbipf(void *uc, void *pages, uint64_t start, int len, uintptr_t retaddr) {
    vn_state *s = 0;
    if (uc == last_uc) {
        s = last_state;
    } else {
        for (int i = 0; i < VN_MAX_ENGINES; i++)
            if (reg_uc[i] == uc) { s = reg_state[i]; break; }
        last_uc = uc;
        last_state = s;
    }
    if (s) {
        for (uint64_t i = 0; i < s->ram_count && i < 16; i++) {
            uint64_t *r = s->ram_ranges[i];
            if (start >= r[0] && start < r[0] + r[1]) {
                code_store(uc, s, start - r[0] + r[2], len > 0 ? (uint64_t)len : 0);
                break;
            }
        }
    }
    real_tbipf(uc, pages, start, len, retaddr);
}

/* UC_HOOK_CODE at a PAUSE (F3 90): count it and apply pause-loop exiting. */
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
    if (rcx != 0x10008)
        return;
    s->reg_read(uc, s->cs_reg, &cs);
    if (cs & 3)
        return;
    s->reg_write(uc, s->rax_reg, &zero);
    s->fast_spin_count++;
    s->bytes += s->exit_ticks;
    s->fast_done_at = address;
}

/* UC_HOOK_CODE over every address while an interrupt waits for RFLAGS.IF (VMX interrupt-window exiting):
 * stops the engine at the first instruction boundary that can take it -- IF = 1, not in the STI shadow, and
 * not where another hook of ours still has to act (an MSR/CR8 site post-hook, the hypercall stub). */
void vn_window(void *uc, uint64_t address, uint32_t size, void *user) {
    vn_state *s = (vn_state *)user;
    uint64_t rflags = 0;
    uint8_t insn = 0;
    int shadow = (int)s->window_shadow;
    (void)size;
    s->window_shadow = s->vmem_read(uc, address, s->prot_read, &insn, 1) == 0 && insn == 0xFB;
    if (shadow)
        return;
    if (s->pending_site && address - s->pending_site >= 2 && address - s->pending_site <= 4)
        return;  /* the MSR (2-3 bytes) or MOV CR8 (4 bytes) post-hook acts at this boundary */
    for (uint64_t i = 0; i < s->stub_count && i < 8; i++)
        if (s->stub_at[i] == address)
            return;
    s->reg_read(uc, s->rflags_reg, &rflags);
    if (!(rflags & 0x200))
        return;
    s->window_open_at = address;
    s->stop_reason = STOP_WINDOW;
    s->stop(uc);
}

/* The interrupt window, checked at block starts (from vn_block while window_active): QEMU ends a translation
 * block after STI, POPF and IRET, the only instructions that set RFLAGS.IF, so IF can only have become 1 at a
 * block start. The first boundary there is in the STI shadow when the block that just ran ended with STI
 * (0xFB); then the machine switches to the per-instruction vn_window for the one shadowed instruction. */
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
        shadow = s->vmem_read(uc, s->last_ran_end, s->prot_read, &insn, 1) == 0 && insn == 0xFB;
    s->window_prev_if = 1;
    if (s->pending_site && address - s->pending_site >= 2 && address - s->pending_site <= 4)
        return 0;
    for (uint64_t i = 0; i < s->stub_count && i < 8; i++)
        if (s->stub_at[i] == address)
            return 0;
    s->window_open_at = address;
    s->stop_reason = shadow ? STOP_WINDOW_SHADOW : STOP_WINDOW;
    s->stop(uc);
    return 1;
}

/* 1 if the block that ran last ended with STI (0xFB): the boundary after it is in the interrupt shadow. */
int vn_after_sti(void *uc, vn_state *s) {
    uint8_t insn = 0;
    return s->last_ran_end && s->vmem_read(uc, s->last_ran_end, s->prot_read, &insn, 1) == 0 && insn == 0xFB;
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
