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
	$(BIN)/viridian run fixtures/build/cpuid_probe.elf --preset recommended
	$(BIN)/viridian run fixtures/build/negotiate.elf --preset recommended --stats-json -
	$(BIN)/viridian cpuid --preset recommended
	$(BIN)/viridian cpuid --hv "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-time,hv-synic,hv-stimer" --json
	$(BIN)/viridian cpuid --xen "base,freq,time_ref_count,apic_assist"
	$(BIN)/viridian guest-os-id 0x0001040601001DB0

bench: $(STAMP) fixtures
	$(BIN)/python bench/bench_machine.py

lint: $(STAMP)
	$(BIN)/ruff check viridian msr tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
