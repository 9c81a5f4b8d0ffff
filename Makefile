# Two entry points (README): `make run` simulates the quickstart scenario, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow bench clean parity

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e .
	touch $@

# The suite runs validation on the CPU: torch 2.13.0 (CPU build) first, so the extras' range is met
# without pulling a multi-GB CUDA build.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/simkv run scenarios/quickstart.yaml -o results/quickstart

# the default suite: minutes on any CPU (tests marked `slow` are deselected in pyproject.toml),
# on every core (pytest-xdist: 2 workers on a 2-core machine)
test: $(VENV)/.installed-test
	$(BIN)/ruff check simkv tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -n auto --dist loadgroup

# only the slow tests: real model shapes on the CPU (bf16 is emulated, ~100x slower, on CPUs
# without AVX-512 BF16 / AMX)
test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow

# speed and memory of four workloads against the previous release, built in the same run, and a
# 16-replica fleet's cost per request against one replica's (~8 minutes; --million adds a million requests)
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_engine.py --fleet

# step-by-step parity with vLLM's own V1 scheduler (optional; never needed by run or test): a separate
# venv with vllm --no-deps and a CPU torch (scripts/parity-env.sh, ~3 minutes), then results/parity/summary.json
PARITY_VENV ?= /tmp/simkv-vllm-parity
parity:
	test -x $(PARITY_VENV)/bin/python || scripts/parity-env.sh $(PARITY_VENV)
	PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 $(PARITY_VENV)/bin/python -m simkv.studies.parity -o results/parity

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
