# Every target sets itself up on a fresh machine: python3 + make are all it assumes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck check clean fixtures bench bench-linux bench-fanout fastpath-matrix diff-engines fuzz fuzz-inputs linux linux-matrix linux-compare pyc qemu gdb

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,farm]'
	touch $(STAMP)

venv: $(STAMP)

fixtures:
	$(MAKE) -s -C fixtures

# byte-compiled modules up front: with PYTHONDONTWRITEBYTECODE set, every run would compile them (~0.1 s)
pyc: $(STAMP)
	$(BIN)/python -m compileall -q viridian msr

# QEMU TCG for the comparisons that need it (tests/machine/test_qemu_*.py; bench-linux): Debian's qemu-system-x86
# through apt when missing and we are root; otherwise those tests skip and say why (never fatal here)
qemu:
	@command -v qemu-system-x86_64 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends qemu-system-x86 >/dev/null; } \
		|| echo "make qemu: qemu-system-x86_64 not installed (apt-get install qemu-system-x86); QEMU comparisons skip"

# gdb for the --gdb test that drives real gdb (tests/machine/test_gdbstub.py), the same way; else it skips
gdb:
	@command -v gdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends gdb >/dev/null; } \
		|| echo "make gdb: gdb not installed (apt-get install gdb); the real-gdb test skips"

test: $(STAMP) fixtures pyc qemu gdb
	$(BIN)/ruff check viridian msr tests bench
	$(BIN)/mypy
	$(BIN)/pytest

demo: $(STAMP) fixtures pyc
	@echo "== 1/4 what the recommended offer looks like to a guest (CPUID 0x40000000-0x4000000A)"
	$(BIN)/viridian cpuid --preset recommended
	@echo
	@echo "== 2/4 a Windows 7-style guest on 2 vCPUs, no enlightenments offered (bare-metal behaviour)"
	$(BIN)/viridian run fixtures/build/win7.elf --vcpus 2 --preset none --report
	@echo
	@echo "== 3/4 the same guest with the recommended offer: what it negotiated, used and fell back from"
	$(BIN)/viridian run fixtures/build/win7.elf --vcpus 2 --preset recommended --report
	@echo
	@echo "== 4/4 before / after: the same workload, side by side"
	$(BIN)/viridian compare fixtures/build/win7.elf --vcpus 2 --a none --b recommended

bench: $(STAMP) fixtures pyc
	$(BIN)/python bench/bench_machine.py

# Debian's cloud kernel (fetched once) on 4 vCPUs to the initramfs program's exit, with the negotiation report
VCPUS ?= 4
linux: $(STAMP) fixtures pyc
	$(BIN)/viridian boot "$$($(BIN)/viridian fetch-kernel)" --vcpus $(VCPUS) --report $(if $(ENGINE),--engine $(ENGINE)) \
		--initrd fixtures/build/initramfs.cpio --append "console=ttyS0 panic=-1 nokaslr viridian.iters=40"

# Debian's cloud kernel to its root-mount panic under {none, xen-3.4, recommended, all} x {1,2,3,4,8} vCPUs
# (OFFERS=a,b VCPUS_LIST=1,2; WORKERS=N cells at once); prints the table, exit 1 unless every cell is green
OFFERS ?= none,xen-3.4,recommended,all
VCPUS_LIST ?= 1,2,3,4,8
WORKERS ?= 2
linux-matrix: $(STAMP) pyc
	$(BIN)/python -m viridian.cli.boot_matrix --offers $(OFFERS) --vcpus $(VCPUS_LIST) --workers $(WORKERS)

# the fan-out layer: a fuzz campaign serial vs --workers 2 (wall time), per-cell overhead, serial-executor overhead
bench-fanout: $(STAMP) pyc
	$(BIN)/python bench/bench_fanout.py

# Debian to the root-mount panic, viridian --preset none (and recommended) vs QEMU TCG on 1 vCPU, and to the
# initramfs exit on 4 vCPUs (recommended vs QEMU -smp 4): CPU and wall time, BENCH_LINUX_RUNS interleaved runs
bench-linux: $(STAMP) fixtures pyc qemu
	$(BIN)/python bench/bench_linux.py

# README "What the enlightenments save on Debian's kernel": viridian compare (none, xen-3.4, recommended) with
# the initramfs at 1 and 4 vCPUs, as Markdown tables (SAVE=DIR keeps the JSON, LOAD=DIR rebuilds from it)
linux-compare: $(STAMP) fixtures pyc
	$(BIN)/python -m viridian.lab.linux_compare $(if $(SAVE),--save $(SAVE)) $(if $(LOAD),--load $(LOAD))

fuzz: $(STAMP)
	$(BIN)/viridian fuzz --ops 1000000 --seed $${SEED:-1}

# 100,000 generated bad host inputs (records, libvirt XML, images, kernels, snapshots, special files, argument
# vectors) through main(argv) in-process: no traceback, no stray write or execution (viridian/fuzz/inputs.py)
fuzz-inputs: $(STAMP) fixtures pyc
	$(BIN)/python -m viridian.fuzz.inputs --cases $${CASES:-100000} --seed $${SEED:-1}

# every fixture guest at 1/2/4 vCPUs with each engine fast path forced off == all on (engine_build.py)
fastpath-matrix: $(STAMP) fixtures
	VIRIDIAN_FASTPATH_MATRIX=1 $(BIN)/pytest tests/machine/test_fastpath_equivalence.py -q

# every fixture guest at 1/2/4 vCPUs on two engines (unicorn vs reference once registered, else vs unicorn:all) and
# Debian's kernel at 1/2 vCPUs with the event log; exit 1 naming the first difference (docs/diff-engines.md)
# (ENGINES=a,b another pair; DIFF_WORKERS=N cells at once)
diff-engines: $(STAMP) fixtures pyc
	$(BIN)/viridian diff-engines --vcpus 1,2,4 --linux --linux-vcpus 1,2 $(if $(ENGINES),--engines $(ENGINES)) \
		$(if $(DIFF_WORKERS),--workers $(DIFF_WORKERS))

lint: $(STAMP)
	$(BIN)/ruff check viridian msr tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
