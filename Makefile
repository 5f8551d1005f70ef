# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv and installs
# robustdml with its dependencies the first time (and again only when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH  ?= runs/benchmark-digits

.PHONY: install demo test test-slow test-all bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The digits benchmark: standard, pgd-at and eat, seed 0, trained and attacked with the strong suite; finished cells are kept, so an
# interrupted `make demo` picks up where it stopped.
demo: $(STAMP)
	$(VENV)/bin/robustdml benchmark --config configs/benchmark-digits.yaml --out $(BENCH)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run.py

# bf16 + channels_last vs fp32 `pgd-at` throughput, ResNet-50 at 224 px (needs a CUDA device)
bench-gpu: $(STAMP)
	$(PY) bench/gpu_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
