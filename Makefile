# fedray — two-command start:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-flower-env bench-flower clean

install: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: that exact CPU build is what this machine serves;
# any other spec would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/fedray run configs/fedavg_synthetic.yaml

test: install
	$(BIN)/ruff check fedray workloads tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check fedray workloads tests benchmarks
	$(BIN)/ruff format --check fedray workloads tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_vs_loop.py

# Flower for benchmarks/bench_vs_flower.py only (never a fedray dependency): flwr[simulation] 1.42
# pins ray==2.55.1 and rich<15, which fedray's ray==2.60.0 and rich==15.0.0 exclude, so it gets a
# venv of its own, with the same torch and numpy.
FLOWER_VENV := .venv-flower
bench-flower-env: $(FLOWER_VENV)/.installed

$(FLOWER_VENV)/.installed: benchmarks/requirements-flower.txt
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-flower.txt
	touch $@

bench-flower: install bench-flower-env
	$(BIN)/python benchmarks/bench_vs_flower.py

clean:
	rm -rf $(VENV) build *.egg-info
