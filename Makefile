# Every target sets itself up on a fresh machine: python3 + make are all it assumes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck check clean fixtures bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

fixtures:
	$(MAKE) -s -C fixtures

test: $(STAMP) fixtures
	$(BIN)/ruff check viridian msr tests bench
	$(BIN)/mypy
	$(BIN)/pytest

demo: $(STAMP) fixtures
	@echo "== what the recommended offer looks like to a guest (CPUID 0x40000000-0x4000000A)"
	$(BIN)/viridian cpuid --preset recommended
	@echo "== a guest negotiates: GUEST_OS_ID, hypercall page, NotifyLongSpinWait, VP_INDEX, TIME_REF_COUNT"
	$(BIN)/viridian run fixtures/build/negotiate.elf
	@echo "== x2APIC timer with EOIs avoided through the VP assist page"
	$(BIN)/viridian run fixtures/build/apic_msrs.elf
	@echo "== synthetic cluster IPIs and a TLB flush hypercall on 4 vCPUs"
	$(BIN)/viridian run --vcpus 4 fixtures/build/hv_ipi.elf
	@echo "== the same IPIs through the xAPIC ICR instead (MMIO exits per IPI)"
	$(BIN)/viridian run --vcpus 4 fixtures/build/ipi.elf
	$(BIN)/viridian guest-os-id 0x0001040601001DB0

bench: $(STAMP) fixtures
	$(BIN)/python bench/bench_machine.py

lint: $(STAMP)
	$(BIN)/ruff check viridian msr tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
