# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= dev,tf,torch,cpu
DEMO_DIR ?= runs/demo
NB_WORKERS ?= 2

.PHONY: install demo test test-nbs test-py sync-check docs bench clean default-model

# Create the venv if missing and install the package with its extras (editable, so notebooks export into it).
$(STAMP): pyproject.toml settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@# CPU-only machines: triton (pulled in by the CUDA torch wheel) can segfault when TF loads first.
	@$(BIN)/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || $(BIN)/python -m pip uninstall -q -y triton || true
	@touch $(STAMP)

install: $(STAMP)

# The main job on the built-in generated sample: sample -> fit -> match on products fit never saw -> F1.
demo: install
	$(BIN)/shopee_nb demo --out $(DEMO_DIR)

# Notebooks and library agree, notebooks are clean, every notebook runs as a test, then pytest.
test: install sync-check test-nbs test-py

sync-check: install
	@before=$$(git status --porcelain; git diff); \
	$(BIN)/nbdev_export; $(BIN)/nbdev_clean; \
	after=$$(git status --porcelain; git diff); \
	if [ "$$before" != "$$after" ]; then echo "nbdev_export/nbdev_clean changed files: notebooks and shopee_nb/ are out of sync or notebooks are not clean:"; git status --short; exit 1; fi; \
	echo "sync-check: nbdev_export and nbdev_clean leave no diff"

test-nbs: install
	$(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing

test-py: install
	$(BIN)/python -m pytest tests/ -q

# nbdev_docs needs Quarto; where it is missing, render a plain HTML preview of the processed notebooks.
docs: install
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev_docs; \
	else echo "Quarto is not installed: building a plain HTML preview of the processed notebooks into _docs/ (install Quarto for the real site)."; \
	rm -rf _proc _docs; $(BIN)/nbdev_proc_nbs; mkdir -p _docs; \
	$(BIN)/jupyter nbconvert --to html --output-dir _docs _proc/*.ipynb; \
	echo "open _docs/index.html"; fi

# Rebuild the model shipped inside the package (used by `shopee_nb match` without --run) from ../shared/data:
# a text member fitted on the Shopee titles (MiniLM + TF-IDF, and a TF-IDF-only fallback) and an image member fitted on grocery photos.
SHARED ?= ../shared/data
default-model: install
	$(BIN)/shopee_nb fit $(SHARED)/shopee --profile cpu --image-encoder none --out runs/default/text-minilm
	$(BIN)/shopee_nb fit $(SHARED)/shopee --profile cpu --text-encoder tfidf --image-encoder none --out runs/default/text-tfidf
	$(BIN)/shopee_nb fit $(SHARED)/grocery --profile cpu --split photo --out runs/default/image
	rm -rf shopee_nb/default_model
	$(BIN)/shopee_nb merge runs/default/text-minilm runs/default/text-tfidf runs/default/image --out shopee_nb/default_model

bench: install
	$(BIN)/python benchmarks/bench_matching.py

clean:
	rm -rf _proc _docs .pytest_cache runs
