# kvraft — `make run` starts a local 3-node cluster, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run run5 demo test test-minimums lint typecheck sim bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

run: $(STAMP)
	@echo "kvraft: dashboard at http://127.0.0.1:8001/ui (any node's /ui), events: $(BIN)/kvraft events --follow"
	$(BIN)/kvraft cluster up --nodes 3

run5: $(STAMP)
	@echo "kvraft: dashboard at http://127.0.0.1:8001/ui (any node's /ui), events: $(BIN)/kvraft events --follow"
	$(BIN)/kvraft cluster up --nodes 5

demo: $(STAMP)
	$(BIN)/kvraft demo

lint: $(STAMP)
	$(BIN)/ruff check kvraft tests benchmarks
	$(BIN)/ruff format --check kvraft tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy kvraft

test: lint typecheck
	bash scripts/ensure-test-tools.sh
	bash scripts/ensure-iptables.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/pytest -q -p no:cacheprovider
	$(MAKE) test-minimums

# The declared lower bounds, installed exactly, against the client tests (needs PyPI; ~30 s).
test-minimums: $(STAMP)
	$(BIN)/python scripts/check_minimum_versions.py

sim: $(STAMP)
	$(BIN)/kvraft sim --seeds 1-2000 --nodes 5
	$(BIN)/kvraft sim --seeds 1-2000 --nodes 3

chaos: $(STAMP)
	bash scripts/ensure-iptables.sh
	$(BIN)/kvraft chaos --nodes 5 --time 60 --nemesis kill,pause,partition,member,transfer,burst --seed 1 --report chaos-report

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
