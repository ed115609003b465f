/* The engine watch (viridian/machine/unicorn/store_watch.py, docs/architecture.md "code coherence"): functions
 * the engine library calls through its own PLT, redirected here, plus the fallback write hook.
 *  - vn_tbipf (tb_invalidate_phys_page_fast): every store into a page the engine considers clean -- with its
 *    dirty tracking stubbed out, every writable RAM page -- passes here with the store's RAM offset; a store
 *    into a page of the machine's code map stops the engine so the other vCPUs drop their translations.
 *  - vn_tlb_set_page (tlb_set_page_with_attrs) and vn_protect_code (tlb_protect_code): fast stores. A TLB
 *    fill for writable RAM that no engine ever translated code from is left without the clean-page flag
 *    (tlb_set_dirty), so the guest's stores there run inline instead of through the engine's slow store
 *    helper; the moment an engine links its first translation into a page, every vCPU's fast entries for
 *    that page get the flag back (tlb_reset_dirty) and the page stays on the watched path from then on.
 *  - vn_tb_gen_code (tb_gen_code): translation hook filter. The engine walks its whole UC_HOOK_CODE list for
 *    every instruction it translates (a Linux boot has ~1000 site hooks); while it translates a block of the
 *    running vCPU, the list is cut to the hooks that can apply to the block's two pages (plus the first one,
 *    so the list is never empty), and put back before anything else runs: after the translation, or -- when
 *    the translation faults out with a longjmp -- at the next block start, translation or vn_leave. The
 *    hooks are the engine's own; only which of them the translator sees changes.
 *    Each block the running vCPU's engine translates is then patched to start in vn_tb_enter (block_entry.c).
 *  - vn_svm_check (cpu_svm_check_intercept_param): the engine's helper for PAUSE asks it whether an SVM
 *    intercept applies (type SVM_EXIT_PAUSE) before it executes the instruction; that call counts the PAUSE
 *    and applies pause-loop exiting (vn_pause), so no PAUSE needs a code hook -- a hooked PAUSE cost a walk
 *    of the whole code-hook list every time a vCPU spun (half of a 4-vCPU Linux boot).
 * The engine handle (or, for TLB fills, the engine that vn_enter says is running) identifies the vCPU.
 */
#include "vn_state.h"
#include <stdlib.h>

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

typedef void (*tbipf_fn)(void *uc, void *pages, uint64_t start, int len, uintptr_t retaddr);
typedef void (*tlb_set_page_fn)(void *cpu, uint64_t vaddr, uint64_t paddr, uint32_t attrs, int prot, int mmu_idx,
                                uint64_t size);
typedef void (*protect_code_fn)(void *uc, uint64_t ram_addr);
typedef void (*set_dirty_fn)(void *cpu, uint64_t vaddr);
typedef void (*reset_dirty_fn)(void *cpu, uint64_t host_start, uint64_t length);

static tbipf_fn real_tbipf;
static tlb_set_page_fn real_tlb_set_page;
static protect_code_fn real_protect_code;
static set_dirty_fn engine_set_dirty;
static reset_dirty_fn engine_reset_dirty;

#define VN_MAX_ENGINES 4096
#define PAGE_WRITE 2         /* QEMU's PAGE_WRITE in a TLB fill's prot */
static void *reg_uc[VN_MAX_ENGINES];
static vn_state *reg_state[VN_MAX_ENGINES];
static int reg_count;
static void *last_uc;
static vn_state *last_state;
static vn_state *running;   /* the vCPU whose engine is inside emu_start (vn_enter .. vn_leave) */

void vn_set_real_tbipf(void *fn) { real_tbipf = (tbipf_fn)fn; }

/* The engine's own functions, for the fast-store redirections (all four, or fast stores stay off). */
void vn_set_engine_fns(void *tlb_set_page, void *protect_code, void *set_dirty, void *reset_dirty) {
    real_tlb_set_page = (tlb_set_page_fn)tlb_set_page;
    real_protect_code = (protect_code_fn)protect_code;
    engine_set_dirty = (set_dirty_fn)set_dirty;
    engine_reset_dirty = (reset_dirty_fn)reset_dirty;
}

int vn_register(void *uc, vn_state *s) {
    for (int i = 0; i < reg_count; i++)
        if (reg_uc[i] == uc) { reg_state[i] = s; last_uc = 0; return 0; }
    if (reg_count >= VN_MAX_ENGINES)
        return -1;
    reg_uc[reg_count] = uc;
    reg_state[reg_count++] = s;
    last_uc = 0;
    return 0;
}

void vn_unregister(void *uc) {
    for (int i = 0; i < reg_count; i++)
        if (reg_uc[i] == uc) {
            if (running == reg_state[i])
                running = 0;
            free(reg_state[i]->hix);  /* the translation filter's index (below) */
            reg_state[i]->hix = 0;
            reg_state[i]->hix_n = reg_state[i]->hix_cap = 0;
            reg_state[i]->hix_head = reg_state[i]->hix_tail = 0;
            reg_count--;
            reg_uc[i] = reg_uc[reg_count];
            reg_state[i] = reg_state[reg_count];
            i--;
        }
    last_uc = 0;
    last_state = 0;
}

void vn_enter(vn_state *s) { running = s; }
void vn_leave(void) { vn_restore_code_hooks(); running = 0; }

static vn_state *lookup(void *uc) {
    if (uc != last_uc) {
        vn_state *s = 0;
        for (int i = 0; i < reg_count; i++)
            if (reg_uc[i] == uc) { s = reg_state[i]; break; }
        last_uc = uc;
        last_state = s;
    }
    return last_state;
}

/* Guest-physical address of engine RAM offset ram_addr (~0 when it is not guest RAM). */
static uint64_t ram_to_gpa(vn_state *s, uint64_t ram_addr) {
    for (uint64_t i = 0; i < s->ram_count && i < 16; i++) {
        uint64_t *r = s->ram_ranges[i];
        if (ram_addr >= r[0] && ram_addr < r[0] + r[1])
            return ram_addr - r[0] + r[2];
    }
    return ~0ULL;
}

static int gpa_writable(vn_state *s, uint64_t gpa) {
    for (uint64_t i = 0; i < s->ram_count && i < 16; i++) {
        uint64_t *r = s->ram_ranges[i];
        if (gpa >= r[2] && gpa < r[2] + r[1])
            return r[3] != 0;
    }
    return 0;
}

static int quiet_loads, quiet_stores;

static int wp_page(vn_state *s, uint64_t gpa) {
    uint64_t page = gpa >> 12;
    return s->wp_map && page < s->code_map_pages && (s->wp_map[page >> 6] >> (page & 63) & 1);
}

/* Leave the engine at the guest instruction whose code called the store helper that returned to retaddr: the
 * engine's own exit-request check (the exit request is set) entered as if called from there -- it restores
 * the guest state for that instruction and longjmps out of the translated code. */
__attribute__((noreturn, noinline)) static void leave_at(void *uc, uintptr_t retaddr) {
    __asm__ volatile("mov %0, %%rdi\n\t"
                     "mov %1, %%rax\n\t"
                     "mov %2, %%rcx\n\t"
                     "and $-16, %%rsp\n\t"
                     "push %%rax\n\t"
                     "xor %%esi, %%esi\n\t"
                     "jmp *%%rcx\n\t"
                     :: "r"(uc), "r"(retaddr), "r"(vn_real_check_exit) : "rdi", "rsi", "rax", "rcx", "memory");
    __builtin_unreachable();
}

void vn_tbipf(void *uc, void *pages, uint64_t start, int len, uintptr_t retaddr) {
    vn_state *s = lookup(uc);
    if (s) {
        uint64_t gpa = ram_to_gpa(s, start), end = gpa + (len > 0 ? (uint64_t)len - 1 : 0);
        if (gpa != ~0ULL && (wp_page(s, gpa) || wp_page(s, end)) && retaddr && vn_real_check_exit) {
            /* a store into a read-only overlay (TLFS §3.13): not performed; the run stops at the storing
             * instruction, where the machine raises #GP -- the engine's own write-protect path could only stop
             * once the block's next exit check ran (loads and stores are translated without them) */
            s->wp_fault = gpa + 1;
            s->stop(uc);
            leave_at(uc, retaddr);
        }
        if (gpa != ~0ULL) {
            uint64_t before = s->dirty_count;
            code_store(uc, s, gpa, len > 0 ? (uint64_t)len : 0);
            /* a store into watched code stops the writer at once, as the exit check after it did: stores are
             * translated without one, so leave before it (it runs again when the machine has synced the other
             * vCPUs; nothing else runs meanwhile). Letting the writer run on to its next block start once broke a
             * 4-vCPU Linux boot (it jumped into its stack at ~0.3 s) -- only by moving where runs stop: the
             * cause was the stale PC mark of a RIP written in the INTR hook (engine.py drop_pc_mark); with
             * that fixed, running on boots 2 and 4 vCPUs to the initramfs exit too. */
            if (s->dirty_count != before && quiet_stores && retaddr && vn_real_check_exit)
                leave_at(uc, retaddr);
        }
    }
    real_tbipf(uc, pages, start, len, retaddr);
}

/* x86_stl_phys_notdirty: the engine's page walker setting Accessed/Dirty in a paging-structure entry (QEMU's
 * mmu_translate; guest-physical address). An entry in a read-only overlay (the hypercall or reference TSC
 * page: the hypervisor's bytes, TLFS §3.13 / §12.7) keeps its bits -- the update is dropped, as QEMU drops a
 * walk's update into ROM -- and the walk goes on (arch_faults.py, unassigned.py: the guest contract). */
typedef void (*stl_phys_fn)(void *cs, uint64_t addr, uint32_t val);
static stl_phys_fn real_stl_notdirty;

void vn_set_real_stl_notdirty(void *fn) { real_stl_notdirty = (stl_phys_fn)fn; }

void vn_stl_notdirty(void *cs, uint64_t addr, uint32_t val) {
    vn_state *s = running;
    if (s && (wp_page(s, addr) || wp_page(s, addr + 3)))
        return;
    real_stl_notdirty(cs, addr, val);
}

/* tlb_set_page_with_attrs: the engine filled a TLB entry (vaddr -> paddr, guest-physical). */
void vn_tlb_set_page(void *cpu, uint64_t vaddr, uint64_t paddr, uint32_t attrs, int prot, int mmu_idx,
                     uint64_t size) {
    real_tlb_set_page(cpu, vaddr, paddr, attrs, prot, mmu_idx, size);
    vn_state *s = running;
    if (!s || !s->tb_map || !(prot & PAGE_WRITE))
        return;
    if (s->cpu != cpu) {
        if (s->cpu)
            return;  /* not the engine that is running (cannot happen; never guess) */
        s->cpu = cpu;
    }
    uint64_t page = paddr >> 12;
    if (page >= s->code_map_pages || (s->tb_map[page >> 6] >> (page & 63) & 1) || !gpa_writable(s, paddr)
        || wp_page(s, paddr))
        return;
    engine_set_dirty(cpu, vaddr);
    s->fast_fills++;
}

/* tlb_protect_code: the engine linked the first translation into the page at RAM offset ram_addr. */
void vn_protect_code(void *uc, uint64_t ram_addr) {
    vn_state *s = lookup(uc);
    if (s && s->tb_map) {
        uint64_t gpa = ram_to_gpa(s, ram_addr), page = gpa >> 12;
        if (gpa != ~0ULL && page < s->code_map_pages && !(s->tb_map[page >> 6] >> (page & 63) & 1)) {
            s->tb_map[page >> 6] |= 1ULL << (page & 63);
            for (int i = 0; i < reg_count; i++) {
                vn_state *r = reg_state[i];
                if (r->tb_map == s->tb_map && r->cpu)
                    engine_reset_dirty(r->cpu, s->host_ram + (page << 12), 0x1000);
            }
            s->rearms++;
        }
    }
    real_protect_code(uc, ram_addr);
}

/* -- translation hook filter ------------------------------------------------------------------------------ */
typedef void *(*tb_gen_code_fn)(void *cpu, uint64_t pc, uint64_t cs_base, uint32_t flags, uint32_t cflags);
typedef struct vn_item { struct vn_item *next; void *data; } vn_item;  /* the engine's list_item */
#define FILTER_MAX 4096
#define HOOK_BEGIN 3         /* struct hook: begin, end as the 4th and 5th 64-bit words (checked by Python) */
static tb_gen_code_fn real_tb_gen_code;
static uint64_t code_list_off;  /* offset of the UC_HOOK_CODE list {head, tail} in the engine; 0 = off */
static vn_item filtered[FILTER_MAX];
static vn_item **cut_list, *cut_head, *cut_tail;
void *vn_code_hooks_cut;

void vn_set_code_filter(uint64_t list_offset, void *real) {
    code_list_off = list_offset;
    real_tb_gen_code = (tb_gen_code_fn)real;
}

void vn_restore_code_hooks(void) {
    if (cut_list) {
        cut_list[0] = cut_head;
        cut_list[1] = cut_tail;
        cut_list = 0;
    }
    vn_code_hooks_cut = 0;
}

/* The filter's index: the engine's code hooks sorted by begin (those for every address kept apart), rebuilt
 * whenever the list's head or tail changed -- hooks are only ever appended to a vCPU's engine (none is
 * deleted), so that is whenever one was added. A translation then looks up its two pages instead of walking
 * the list (~1000 hooks on a Linux boot: 5 % of it). Found hooks keep their list order. */
typedef struct { uint64_t begin, end, pos; void *data; } hix_entry;

static int hix_order(const void *a, const void *b) {
    const hix_entry *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->pos > y->pos) - (x->pos < y->pos);
}

static int hix_build(vn_state *s, vn_item *head, vn_item *tail) {
    uint64_t n = 0, span = 0;
    for (vn_item *it = head; it; it = it->next)
        n++;
    if (n > s->hix_cap) {
        void *grown = realloc(s->hix, (n + 256) * sizeof(hix_entry));
        if (!grown)
            return -1;
        s->hix = grown;
        s->hix_cap = n + 256;
    }
    hix_entry *ix = s->hix;
    n = 0;
    for (vn_item *it = head; it; it = it->next, n++) {
        const uint64_t *h = (const uint64_t *)it->data;
        uint64_t b = h[HOOK_BEGIN], e = h[HOOK_BEGIN + 1];
        if (b > e) {  /* every address: first in the order, found by every lookup */
            b = 0;
            e = ~0ULL;
        } else if (e - b > span) {
            span = e - b;
        }
        ix[n] = (hix_entry){b, e, n, it->data};
    }
    qsort(ix, n, sizeof(hix_entry), hix_order);
    s->hix_n = n;
    s->hix_span = span;
    s->hix_head = head;
    s->hix_tail = tail;
    s->hix_rebuilds++;
    return 0;
}

static int hix_pos_order(const void *a, const void *b) {
    const hix_entry *x = *(hix_entry *const *)a, *y = *(hix_entry *const *)b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* The hooks that can apply to [lo, hi) into filtered[], in list order; -1 when there are too many. */
static int hix_lookup(vn_state *s, uint64_t lo, uint64_t hi) {
    static hix_entry *found[FILTER_MAX];
    hix_entry *ix = s->hix;
    uint64_t from = lo > s->hix_span ? lo - s->hix_span : 0, a = 0, z = s->hix_n, k = 0;
    int n = 0;
    for (; k < s->hix_n && ix[k].begin == 0; k++)  /* every-address hooks are among these (begin 0) */
        if (ix[k].end >= lo) {
            if (n == FILTER_MAX)
                return -1;
            found[n++] = &ix[k];
        }
    while (a < z) {  /* first entry with begin >= from */
        uint64_t m = (a + z) / 2;
        if (ix[m].begin < from)
            a = m + 1;
        else
            z = m;
    }
    for (uint64_t i = a > k ? a : k; i < s->hix_n && ix[i].begin < hi; i++) {
        if (ix[i].end < lo)
            continue;
        if (n == FILTER_MAX)
            return -1;
        found[n++] = &ix[i];
    }
    qsort(found, (size_t)n, sizeof(found[0]), hix_pos_order);
    for (int i = 0; i < n; i++)
        filtered[i].data = found[i]->data;
    return n;
}

void *vn_tb_gen_code(void *cpu, uint64_t pc, uint64_t cs_base, uint32_t flags, uint32_t cflags) {
    vn_restore_code_hooks();
    vn_state *s = running;
    if (s && code_list_off && s->uc && s->cpu == cpu) {
        vn_item **list = (vn_item **)((char *)s->uc + code_list_off);
        vn_item *head = list[0];
        uint64_t lo = pc & ~0xFFFULL, hi = lo + 0x2000;  /* an x86 block spans at most two pages */
        int n = 0;
        if (head && (s->hix_head != head || s->hix_tail != list[1]) && hix_build(s, head, list[1]) != 0)
            s->hix_head = s->hix_tail = 0;
        if (head && s->hix_head == head) {
            n = hix_lookup(s, lo, hi);
        } else {
            for (vn_item *it = head; it && n >= 0; it = it->next) {
                const uint64_t *h = (const uint64_t *)it->data;
                uint64_t b = h[HOOK_BEGIN], e = h[HOOK_BEGIN + 1];
                if (b > e || (b < hi && e >= lo)) {  /* begin > end: every address */
                    if (n == FILTER_MAX)
                        n = -1;
                    else
                        filtered[n++].data = it->data;
                }
            }
        }
        if (head && n >= 0) {
            if (n == 0)
                filtered[n++].data = head->data;  /* never empty: "any code hook?" keeps its answer */
            for (int i = 0; i < n; i++)
                filtered[i].next = i + 1 < n ? &filtered[i + 1] : 0;
            cut_list = list;
            cut_head = head;
            cut_tail = list[1];
            list[0] = &filtered[0];
            list[1] = &filtered[n - 1];
            vn_code_hooks_cut = list;
            s->hot = 0;  /* restored at the next block start if the translation faults out */
            s->filtered_tbs++;
        }
    }
    void *tb = real_tb_gen_code(cpu, pc, cs_base, flags, cflags);
    vn_restore_code_hooks();

    if (s && s->tb_patch && s->cpu == cpu) {
        uint16_t size;
        vn_patch_block(s, tb, pc);  /* block_entry.c: the block starts in vn_tb_enter */
        memcpy(&size, (const uint8_t *)tb + VN_TB_SIZE, 2);
        vn_scan_block(s, pc, size);
    }
    return tb;
}

/* -- PAUSE without hooks -------------------------------------------------------------------------------- */
typedef void (*svm_check_fn)(void *env, uint32_t type, uint64_t param, uintptr_t retaddr);
#define SVM_EXIT_PAUSE 0x77  /* AMD APM vol. 2, Appendix C (the engine's helper_pause passes it) */
static svm_check_fn real_svm_check;

void vn_set_real_svm_check(void *fn) { real_svm_check = (svm_check_fn)fn; }

void vn_svm_check(void *env, uint32_t type, uint64_t param, uintptr_t retaddr) {
    vn_state *s = running;
    if (type == SVM_EXIT_PAUSE && s && s->pause_native && s->uc)
        vn_pause(s->uc, 0, 0, s);
    real_svm_check(env, type, param, retaddr);
}

/* -- guest loads and stores without exit checks ------------------------------------------------------------ */
/* The translator's tcg_gen_qemu_ld/st_i32/_i64 (reached through the engine's PLT) emit an exit-request helper
 * call after every guest access unless uc->no_exit_request is set (Unicorn: so a memory hook's uc_emu_stop
 * takes effect at once). The flag is set while an access is generated. Nothing here needs the checks: an
 * APIC MMIO access never stops the vCPU at once, a fault is raised precisely by the engine itself, an access
 * outside RAM ends the run with an error either way, and a store into watched code or into a read-only
 * overlay leaves the engine at the storing instruction from vn_tbipf (above) -- so stores are quiet only with
 * that (vn_real_check_exit known). Offsets come from check_exit_request's first two instructions
 * (store_watch.py). */
typedef void (*gen_ld_fn)(void *ctx, void *val, void *addr, uintptr_t idx, int memop);
static gen_ld_fn real_ld_i32, real_ld_i64, real_st_i32, real_st_i64;
static uint64_t ctx_uc_off, quiet_off;

void vn_set_quiet_loads(void *ld_i32, void *ld_i64, uint64_t uc_off, uint64_t flag_off) {
    real_ld_i32 = (gen_ld_fn)ld_i32;
    real_ld_i64 = (gen_ld_fn)ld_i64;
    ctx_uc_off = uc_off;
    quiet_off = flag_off;
}

void vn_set_quiet_stores(void *st_i32, void *st_i64) {
    real_st_i32 = (gen_ld_fn)st_i32;
    real_st_i64 = (gen_ld_fn)st_i64;
}


void vn_enable_quiet_loads(int on) { quiet_loads = on && quiet_off; }
void vn_enable_quiet_stores(int on) { quiet_stores = on && quiet_off; }

static void quiet_access(int on, gen_ld_fn real, void *ctx, void *val, void *addr, uintptr_t idx, int memop) {
    if (!on) {
        real(ctx, val, addr, idx, memop);
        return;
    }
    uint8_t *flag = *(uint8_t **)((uint8_t *)ctx + ctx_uc_off) + quiet_off, was = *flag;
    *flag = 1;
    real(ctx, val, addr, idx, memop);
    *flag = was;
    if (running)
        running->quiet_accesses++;
}

void vn_gen_ld_i32(void *ctx, void *val, void *addr, uintptr_t idx, int memop) {
    quiet_access(quiet_loads, real_ld_i32, ctx, val, addr, idx, memop);
}

void vn_gen_ld_i64(void *ctx, void *val, void *addr, uintptr_t idx, int memop) {
    quiet_access(quiet_loads, real_ld_i64, ctx, val, addr, idx, memop);
}

void vn_gen_st_i32(void *ctx, void *val, void *addr, uintptr_t idx, int memop) {
    quiet_access(quiet_stores, real_st_i32, ctx, val, addr, idx, memop);
}

void vn_gen_st_i64(void *ctx, void *val, void *addr, uintptr_t idx, int memop) {
    quiet_access(quiet_stores, real_st_i64, ctx, val, addr, idx, memop);
}

/* Tests: 1 if the index finds exactly the hooks the walk finds, in the same order, for the pages at lo. */
int vn_filter_selftest(vn_state *s, uint64_t lo) {
    static void *walked[FILTER_MAX];
    if (!code_list_off || !s->uc)
        return 0;
    vn_item **list = (vn_item **)((char *)s->uc + code_list_off);
    uint64_t hi = lo + 0x2000;
    int n = 0;
    for (vn_item *it = list[0]; it && n < FILTER_MAX; it = it->next) {
        const uint64_t *h = (const uint64_t *)it->data;
        uint64_t b = h[HOOK_BEGIN], e = h[HOOK_BEGIN + 1];
        if (b > e || (b < hi && e >= lo))
            walked[n++] = it->data;
    }
    if (list[0] && (s->hix_head != list[0] || s->hix_tail != list[1]) && hix_build(s, list[0], list[1]) != 0)
        return 0;
    int m = hix_lookup(s, lo, hi);
    if (m != n)
        return 0;
    for (int i = 0; i < n; i++)
        if (filtered[i].data != walked[i])
            return 0;
    return 1;
}
