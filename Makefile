# The two commands of the README: `make demo` and `make test`. Both set everything up on first use.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup data demo test lint bench clean

setup:
	@bash scripts/setup.sh

data:
	@bash scripts/get-data.sh

demo: setup
	$(BIN)/modscope demo --out demo-out

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_clusterability.py
	$(BIN)/python benchmarks/bench_masks.py

clean:
	rm -rf $(VENV) demo-out modscope-demo .pytest_cache .ruff_cache .hypothesis
