# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv and installs
# robustdml with its dependencies the first time (and again only when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH  ?= runs/benchmark-digits

.PHONY: install demo test test-slow test-all bench bench-quick bench-gpu gpu-checks bench-fashion-gpu bench-fashion-zs-gpu clean

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

# every benchmark on reduced sizes (noisier ratios, a few minutes)
bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

# bf16 + channels_last vs fp32 `pgd-at` throughput, ResNet-50 at 224 px (needs a CUDA device)
bench-gpu: $(STAMP)
	$(PY) bench/gpu_speed.py

# every figure only a CUDA device gives, each part time-boxed (about 8 minutes): the GPU tests, G2 and M1g,
# P3/P3b (batched EAT members), M1 under RobRank's Fashion recipe eager and graphed; logs in GPU_OUT
GPU_OUT ?= runs/gpu-checks
gpu-checks: $(STAMP)
	PYTHON=$(PY) bench/gpu_checks.sh $(GPU_OUT) $(FASHION)

# RobRank's Fashion-MNIST grid at its full training settings, one seed (SEED=0, 1 or 2), the six
# methods as parallel processes on one GPU (about 40 minutes on an H200 eager; GRAPHS=1 adds
# cuda_graphs=auto: graphed training passes; logs in the output folder);
# FASHION=DIR names the folder of the four IDX files if they are not where Debian's package puts them.
SEED    ?= 0
FASHION ?=
GRAPH_OPTION := $(if $(GRAPHS),train.cuda_graphs=auto)
FASHION_OUT := runs/benchmark-fashion-gpu
bench-fashion-gpu: $(STAMP)
	@mkdir -p $(FASHION_OUT)
	for m in standard est act hm pgd-at eat; do \
	  $(VENV)/bin/robustdml benchmark --config configs/benchmark-fashion-gpu.yaml --out $(FASHION_OUT) --quiet $(GRAPH_OPTION) \
	    $(if $(FASHION),--root fashion=$(FASHION)) --only method=$$m --only seed=$(SEED) \
	    > $(FASHION_OUT)/$$m-s$(SEED).log 2>&1 & \
	done; wait
	$(VENV)/bin/robustdml report $(FASHION_OUT)

# EAT's decision grid on zero-shot Fashion-MNIST (docs/results-eat.md), one seed, the six methods as
# parallel processes on one GPU (GRAPHS=1 adds cuda_graphs=auto: graphed training passes): GRID=fast (default) is
# configs/benchmark-fashion-zs.yaml, the carried one-step adversary; GRID=full is
# configs/benchmark-fashion-zs-full.yaml, RobRank's 32-step one. Cells resume where they stopped.
GRID ?= fast
ZS_CONFIG := configs/$(if $(filter full,$(GRID)),benchmark-fashion-zs-full,benchmark-fashion-zs).yaml
ZS_OUT := runs/$(if $(filter full,$(GRID)),benchmark-fashion-zs-full,benchmark-fashion-zs)-gpu
bench-fashion-zs-gpu: $(STAMP)
	@mkdir -p $(ZS_OUT)
	for m in pgd-at hm eat-control eat eat-distill-clean eat-distill-adv; do \
	  $(VENV)/bin/robustdml benchmark --config $(ZS_CONFIG) --out $(ZS_OUT) --quiet train.workers=2 $(GRAPH_OPTION) \
	    $(if $(FASHION),--root fashion-zs=$(FASHION)) --only method=$$m --only seed=$(SEED) \
	    > $(ZS_OUT)/$$m-s$(SEED).log 2>&1 & \
	done; wait
	$(VENV)/bin/robustdml report $(ZS_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
