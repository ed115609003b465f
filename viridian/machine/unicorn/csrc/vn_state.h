/* vn_state: the per-vCPU block shared by the hot-path hooks (vcpu_native.c), the engine watch
 * (engine_watch.c) and Python (viridian/machine/unicorn/native.py mirrors it field by field, in this order). */
#ifndef VN_STATE_H
#define VN_STATE_H
#include <stdint.h>
#include <string.h>

typedef int (*stop_fn)(void *uc);
typedef int (*reg_write_fn)(void *uc, int regid, const void *value);
typedef int (*reg_read_fn)(void *uc, int regid, void *value);
typedef int (*vmem_translate_fn)(void *uc, uint64_t address, int prot, uint64_t *paddress);
typedef uint32_t (*io_in_fn)(void *uc, uint32_t port, int size, void *user);
typedef void (*io_out_fn)(void *uc, uint32_t port, int size, uint32_t value, void *user);
typedef void (*code_fn)(void *uc, uint64_t address, uint32_t size, void *user);
#define VN_SERIAL_BUF 4096
#define VN_NATIVE_MSRS 4
enum { VN_MSR_REFERENCE = 1, VN_MSR_TSC_OFFSET = 2 };  /* native_msrs[].kind */

enum { STOP_NONE = 0, STOP_BUDGET = 1, STOP_NEW_SITES = 2, STOP_TABLE_FULL = 3, STOP_PAUSE = 4, STOP_WINDOW = 5 };

typedef struct {
    uint64_t bytes;         /* guest code bytes executed (the clock) */
    uint64_t limit;         /* stop once bytes >= limit */
    uint64_t blocks;        /* blocks executed */
    uint64_t hot;           /* vn_tb_enter may count the next block inline (no window, nothing to restore) */
    uint64_t block_start;    /* the block vn_block was last called for (a block-hook stop leaves RIP here) */
    uint64_t last_ran_end;   /* last byte of the last block that ran (STI ends a block: the shadow test) */
    uint64_t pend_end, pend_valid;
    volatile int32_t *exit_request; /* the engine's exit-request word (negative: leave before the next block) */
    uint64_t pending_site;  /* address of the MSR instruction about to execute, 0 = none */
    uint64_t stop_reason;
    uint64_t new_page;      /* page holding new candidate sites (STOP_NEW_SITES) */
    uint64_t pages_scanned;
    uint64_t last_page;     /* one-entry cache of the last page found in the table, +1 */
    stop_fn stop;
    reg_write_fn reg_write;
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
    uint64_t window_open_at; /* window_block stopped here: the first boundary with RFLAGS.IF = 1, no shadow */
    uint64_t stub_count;     /* addresses of the hypercall-page stub hooks (never stop there) */
    uint64_t stub_at[8];
    uint64_t window_active;  /* block-level interrupt-window check in vn_block (see window_block) */
    uint64_t window_first;   /* the next block start is the first since the window was armed */
    uint64_t window_prev_if; /* RFLAGS.IF at the previous block start */
    uint64_t *code_map;      /* shared by every vCPU: bit per physical page some vCPU executed (and scanned) */
    uint64_t code_map_pages; /* guest RAM pages the map covers */
    vmem_translate_fn vmem_translate;
    uint64_t new_code_pa[1024]; /* the physical page behind each new_code entry */
    uint64_t code_writes;    /* stores that hit a page of code_map */
    uint64_t *defer_map;     /* shared: pages written since they last ran -- watched again only when the
                                machine syncs after the slice (bounds stops on pages mixing code and data) */
    uint64_t ram_count;      /* the engine's RAM blocks over guest RAM: [ram_addr, ram_addr + size) -> gpa, */
    uint64_t ram_ranges[16][4]; /* ... and whether the guest may write it (region protection) */
    uint64_t tsc_base;       /* RDTSC natively (vn_rdtsc): partition time = bytes + tsc_base, at least */
    uint64_t tsc_floor;      /* ... tsc_floor (the partition clock; raised by every read) */
    uint64_t tsc_offset;     /* ... plus this vCPU's TSC offset (IA32_TSC / TSC_ADJUST writes) */
    uint64_t rdtsc_count;    /* reads answered here since the machine last collected them */
    int rdx_reg;
    uint64_t *tb_map;        /* shared: bit per guest-physical page any engine ever translated code from */
    uint64_t host_ram;       /* host address of guest-physical 0 (the RAM buffer every engine maps) */
    void *cpu;               /* this engine's CPUState, learned at its first TLB fill while it runs */
    uint64_t fast_fills;     /* TLB fills of writable RAM left without the engine's clean-page flag */
    uint64_t rearms;         /* pages whose fast TLB entries were withdrawn when they first held code */
    int cr0_reg, cr3_reg, cr4_reg, walk_pad;
    uint64_t engine_reads;   /* guest-virtual reads that needed the engine (paging the walker does not do) */
    void *uc;                /* this vCPU's engine handle (the translation hook filter reads its code-hook list) */
    uint64_t filtered_tbs;   /* translations made with the code-hook list cut to the block's two pages */
    uint64_t pause_native;   /* PAUSE reaches vn_pause through the engine's SVM intercept check (no hooks) */
    uint64_t tb_patch;       /* this engine's translations enter vn_tb_enter (no block hook; engine_watch.c) */
    uint64_t tb_patched;     /* translations patched so */
    uint64_t tb_patch_failed; /* why a translation could not be patched (VN_PATCH_*): patching is off, the run
                                 stopped */
    uint64_t tb_back;        /* a patched block's entry call returns this many bytes past its TranslationBlock
                                (block_entry.c: set by the engine's first patched block, 0 = none yet) */
    io_in_fn io_in_slow;     /* the machine's IN/OUT handlers (Python) for everything vn_in/vn_out do not answer */
    io_out_fn io_out_slow;
    uint64_t com1_base;      /* COM1's ports (0 = no native serial) */
    uint64_t thr_native;     /* COM1's LCR.DLAB is 0: a THR write is a byte of output */
    uint64_t lsr_reads;      /* LSR reads answered here since the machine last collected them */
    uint64_t io_last;        /* the clock (bytes) at the last of them */
    uint64_t serial_len;     /* THR bytes written here since then ... */
    uint8_t serial_buf[VN_SERIAL_BUF]; /* ... in order */
    code_fn msr_slow;        /* the machine's MSR handler (Python) behind vn_msr_done */
    uint64_t pending_len;    /* vn_site: the site is RDMSR of this length (2, or 3 with one prefix); 0 = other */
    uint64_t native_msr_count; /* native_msrs in use (each: offered, first read on record, no trace) */
    uint64_t ref_scale;      /* VN_MSR_REFERENCE: page_time(partition TSC, scale, offset) (partition/reftime.py) */
    uint64_t ref_offset;
    uint64_t native_reads;   /* reads answered here (all of them) since the machine last collected them */
    int msr_reg, msr_pad;    /* UC_X86_REG_MSR (vn_rdtscp reads IA32_TSC_AUX through it) */
    uint64_t quiet_accesses; /* guest loads and stores translated without an exit check after them */
    uint64_t *wp_map;        /* shared: bit per guest-physical page guest stores must not change (read-only
                                overlays: TLFS §3.13 hypercall page...); stores there #GP precisely (vn_tbipf) */
    uint64_t wp_fault;       /* the guest-physical address + 1 of such a store (the run stopped at it) */
    struct { uint64_t index, kind, offset, reads; } native_msrs[VN_NATIVE_MSRS]; /* RDMSRs vn_msr_done answers */
    void *hix;               /* engine_watch.c: this engine's code hooks sorted by address (the filter's index) */
    uint64_t hix_n, hix_cap, hix_span, hix_rebuilds;
    void *hix_head, *hix_tail; /* ... built for the hook list with this head and tail */
    uint64_t ple_quiet;      /* vn_pause: a pause-loop exit would change nothing (quiet_ple.py): count it here */
    uint64_t ple_exits;      /* pause-loop exits counted so since the machine last collected them */
    /* constants of the fast paths, set from the model when the engine is built (native.model_constants) */
    uint64_t spin_control;   /* vn_stub: the fast HvCallNotifyLongSpinWait input value (abi.control encoding) */
    uint64_t lsr_idle;       /* vn_in: COM1's LSR while it transmits instantly (devices/uart16550.py) */
    uint64_t stub_len;       /* scan_page: our hypercall page's bytes up to its hook (machine/stubs.py) */
    uint8_t stub_sig[16];
    uint64_t exact;          /* replays only (eventlog.py): also stop before a block that would take bytes past
                                limit, so the machine can step single instructions to exactly limit */
} vn_state;

void vn_pause(void *uc, uint64_t address, uint32_t size, void *user);
void vn_tb_enter(void *arg, int flag);  /* vcpu_native.c: every patched block starts here */

/* The engine's TranslationBlock (Unicorn 2.1.4, checked for every block patched): pc, size, host code. */
enum { VN_TB_PC = 0, VN_TB_SIZE = 20, VN_TB_CODE = 32 };
enum { VN_PATCH_NO_TB = 1, VN_PATCH_PC, VN_PATCH_LAYOUT, VN_PATCH_BYTES, VN_PATCH_POOL, VN_PATCH_CALLEE,
       VN_PATCH_REACH, VN_PATCH_STATE_REACH };  /* block_entry.c: why a block was not patched */
extern __attribute__((visibility("hidden"))) void (*vn_real_check_exit)(void *uc, int flag);

void vn_patch_block(vn_state *s, void *tb, uint64_t pc);  /* block_entry.c */
void vn_scan_block(vn_state *s, uint64_t pc, uint32_t size); /* vcpu_native.c: a patched block's pages */
void vn_restore_code_hooks(void); /* engine_watch.c: undo a hook-list cut a translation left behind */
extern __attribute__((visibility("hidden"))) void *vn_code_hooks_cut;
#endif
