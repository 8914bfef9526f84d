# Every target that needs Python depends on the venv stamp, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/shapes
CKPT ?= checkpoints/pixellm-tiny
JOBS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install data test test-fast lint style train bench flops clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project (torch pinned by constraints.txt)

$(DATA)/muse_train.json: | $(STAMP)
	$(BIN)/pixellm-data --out $(DATA)

data: $(STAMP) ## Generate the default procedural MUSE-format dataset under data/ (skips if present)
	@if [ -f $(DATA)/muse_train.json ]; then echo "$(DATA) exists (delete it to regenerate)"; \
	else $(BIN)/pixellm-data --out $(DATA); fi

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## Static checks (ruff)
	$(BIN)/ruff check pixellm codebook decoder muse benchmarks tests

style: $(STAMP) ## Apply ruff fixes and formatting of imports
	$(BIN)/ruff check --fix pixellm codebook decoder muse benchmarks tests

clean: ## Remove caches (keeps .venv, data and checkpoints)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
