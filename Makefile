# Every target that needs Python depends on the venv stamp, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/shapes
RUN ?= checkpoints/pixellm-tiny
JOBS ?= 2
TRAIN_BUDGET ?= 14
# With a budget, the step count is an upper bound: the run is sized from its measured pace.
TRAIN_STEPS ?= 8000
TRAIN_ARGS ?=
BENCH_ARGS ?=
FLOPS_ARGS ?=
COMPARE_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install data test lint style train bench bench-ablation compare ablate describe demo flops clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge 7 ] || \
	  echo "warning: $$free GiB free on this disk; the venv needs about 6.5 GiB (torch 2.14.1 is a CUDA build)" >&2
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir --upgrade pip setuptools wheel -c constraints.txt
	$(BIN)/pip install -q --no-cache-dir -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-cache-dir -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project (torch pinned by constraints.txt)

data: $(STAMP) ## Generate the default procedural MUSE-format dataset under data/ (skips if up to date)
	$(BIN)/pixellm-data --out $(DATA) --if-stale

train: $(STAMP) ## Install, generate data if missing or stale, train pixellm-tiny on CPU, evaluate on val, print the table
	$(BIN)/pixellm-data --out $(DATA) --if-stale
	$(BIN)/pixellm-train --model pixellm-tiny --shapes-root $(DATA) --out $(RUN) --steps $(TRAIN_STEPS) --time-budget $(TRAIN_BUDGET) $(TRAIN_ARGS)

flops: $(STAMP) ## Compute report: FLOPs (meta device), CPU/GPU latency -> benchmarks/results/
	$(BIN)/pixellm-flops --out benchmarks/results $(FLOPS_ARGS)

bench: FRESH_DATA ?= data/shapes-fresh
bench: $(STAMP) ## Score the trained default model vs trivial baselines (and on fresh seed-1000 scenes) -> benchmarks/results/
	@test -f $(RUN)/final/config.json || { echo "no trained model at $(RUN)/final: run 'make train' first"; exit 1; }
	$(BIN)/pixellm-data --out $(FRESH_DATA) --seed 1000 --train 0 --val 0 --if-stale
	$(BIN)/pixellm-bench --checkpoint $(RUN)/final --data $(DATA) --fresh-data $(FRESH_DATA) --threads $(JOBS) $(BENCH_ARGS)

bench-ablation: $(STAMP) ## Also train + bench the ablation variants (5 more training runs, same seed and budget)
	@test -f $(RUN)/final/config.json || { echo "no trained model at $(RUN)/final: run 'make train' first"; exit 1; }
	$(BIN)/pixellm-bench --checkpoint $(RUN)/final --data $(DATA) --threads $(JOBS) --ablation --train-args "$(TRAIN_ARGS)" $(BENCH_ARGS)

compare: $(STAMP) ## Train what is missing (pixellm-tiny, lisa-tiny, lisa-tiny-merged, lseg-tiny, lts-tiny; make train's budget each), bench all, report
	$(BIN)/pixellm-data --out $(DATA) --if-stale
	$(BIN)/pixellm-compare --data $(DATA) --runs $(dir $(RUN)) --steps $(TRAIN_STEPS) --time-budget $(TRAIN_BUDGET) --train-args "$(TRAIN_ARGS)" --threads $(JOBS) $(COMPARE_ARGS)

describe: FRESH_DATA ?= data/shapes-fresh
describe: DESCRIBER ?= checkpoints/dynrefer-tiny
describe: $(STAMP) ## Train dynrefer-tiny on make train's frozen ViT (if missing), then the region-description report
	@test -f $(RUN)/final/config.json || { echo "no trained model at $(RUN)/final: run 'make train' first"; exit 1; }
	$(BIN)/pixellm-data --out $(DATA) --if-stale
	$(BIN)/pixellm-data --out $(FRESH_DATA) --seed 1000 --train 0 --val 0 --if-stale
	test -f $(DESCRIBER)/final/config.json || $(BIN)/pixellm-train --model dynrefer-tiny --shapes-root $(DATA) \
	  --out $(DESCRIBER) --steps $(TRAIN_STEPS) --time-budget $(TRAIN_BUDGET) --batch-size 16 $(TRAIN_ARGS)
	$(BIN)/pixellm-bench --checkpoint $(DESCRIBER)/final --data $(DATA) --fresh-data $(FRESH_DATA) \
	  --targets-from $(RUN)/final --threads $(JOBS) $(BENCH_ARGS)

demo: $(STAMP) ## Serve the web demo of the trained default model on http://127.0.0.1:7860
	@test -f $(RUN)/final/config.json || { echo "no trained model at $(RUN)/final: run 'make train' first"; exit 1; }
	$(BIN)/pixellm-demo --checkpoint $(RUN)/final

ablate: ABLATE_BUDGET ?= 4
ablate: $(STAMP) ## LSeg regularisation depth 0/1/2/4 and DynRefer views/tasks (ABLATE_BUDGET min each), LTS with/without the position prior (TRAIN_BUDGET min each)
	$(BIN)/pixellm-data --out $(DATA) --if-stale
	$(BIN)/pixellm-data --out data/shapes-fresh --seed 1000 --train 0 --val 0 --if-stale
	$(BIN)/pixellm-ablate --family lseg --data $(DATA) --fresh-data data/shapes-fresh --splits test --limit 100 --time-budget $(ABLATE_BUDGET) --threads $(JOBS)
	@# LTS's mask BCE leaves the empty-mask plateau after about 3,000 steps: shorter runs score 0 with or without the prior
	$(BIN)/pixellm-ablate --family lts --data $(DATA) --fresh-data data/shapes-fresh --time-budget $(TRAIN_BUDGET) --threads $(JOBS)
	@# DynRefer: views and tasks (needs make train's pixellm-tiny, whose ViT it reads frozen)
	$(BIN)/pixellm-ablate --family dynrefer --data $(DATA) --fresh-data data/shapes-fresh --time-budget $(ABLATE_BUDGET) \
	  --threads $(JOBS) --train-args "--batch-size 16"

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## Static checks (ruff)
	$(BIN)/ruff check pixellm codebook decoder muse lisa lseg lts dynrefer benchmarks tests

style: $(STAMP) ## Apply ruff fixes and formatting of imports
	$(BIN)/ruff check --fix pixellm codebook decoder muse lisa lseg lts dynrefer benchmarks tests

clean: ## Remove caches (keeps .venv, data and checkpoints)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
