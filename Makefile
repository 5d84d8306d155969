# fedray — two-command start:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info
