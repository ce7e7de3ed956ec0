"""Generation through vLLM's offline engine, always in a child process.

The engine holds its memory (KV cache, CUDA graphs) until its process ends, so it never shares a
process with training: `VLLMBackend.generate` writes the prompts to a file, runs this module as a
worker (`python -m rationale_loop.generate.vllm`), and reads the completions back. The worker's
interpreter is `generate.python` (default: the current one), so vLLM may live in its own virtual
environment (.venv-vllm) while everything else runs in .venv.

vLLM is imported only inside the worker; importing this module costs nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

from rationale_loop.generate.base import Completion, Sampling

log = logging.getLogger(__name__)


class VLLMBackend:
    def __init__(self, checkpoint: str | Path, engine: dict[str, Any], python: str | None = None, lora: str | Path | None = None):
        self.checkpoint = str(checkpoint)
        self.engine = engine
        self.python = python or sys.executable
        self.lora = str(lora) if lora else None
        self.last_timing: dict[str, float] = {}  # the worker's own clock: import, engine start, generation

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> Iterator[tuple[int, list[Completion]]]:
        with tempfile.TemporaryDirectory(prefix="rationale_loop_vllm_") as tmp:
            request = Path(tmp) / "request.json"
            results = Path(tmp) / "results.jsonl"
            request.write_text(
                json.dumps({
                    "model": self.checkpoint,
                    "engine": self.engine,
                    "lora": self.lora,
                    "sampling": asdict(sampling),
                    "prompts": list(prompts),
                })
            )
            command = [self.python, "-m", "rationale_loop.generate.vllm", str(request), str(results)]
            log.info("vllm: generating %d x %d in a child process (%s)", len(prompts), sampling.n, self.python)
            completed = subprocess.run(command, env=_worker_env(), check=False)
            if completed.returncode != 0:
                raise RuntimeError(f"the vLLM worker failed with exit code {completed.returncode}: {' '.join(command)}")
            timing = Path(tmp) / "timing.json"
            self.last_timing = json.loads(timing.read_text()) if timing.exists() else {}
            seen = set()
            with results.open(encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    seen.add(row["index"])
                    yield row["index"], [Completion(**c) for c in row["completions"]]
            if len(seen) != len(prompts):
                raise RuntimeError(f"the vLLM worker returned {len(seen)} of {len(prompts)} prompts")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local; never reach for a hub
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    # The worker is already its own process: no need for vLLM to start another one for its engine.
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # On CPU, vLLM sizes its KV cache from this (GiB); without it, it asks for most of the memory.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def _run_worker(request_path: str, results_path: str) -> None:
    import time

    started = time.perf_counter()
    from vllm import LLM, SamplingParams

    imported = time.perf_counter()

    request = json.loads(Path(request_path).read_text())
    sampling = Sampling(**request["sampling"])
    engine = {k: v for k, v in request["engine"].items() if v is not None}
    lora_request = None
    if request["lora"]:
        from vllm.lora.request import LoRARequest

        engine.setdefault("enable_lora", True)
        lora_request = LoRARequest("round_adapter", 1, request["lora"])
    llm = LLM(model=request["model"], seed=sampling.seed, **engine)
    engine_ready = time.perf_counter()
    prompts = request["prompts"]
    greedy = sampling.temperature <= 0
    # The engine's seed (LLM(seed=...)) makes a run reproducible. No per-request seed: on vLLM's CPU
    # build a seeded request whose prefill is split into chunks fails ("CPU Generator does not use
    # offset"), and a shared per-request seed would give sample i of every prompt the same stream.
    params = SamplingParams(
        n=sampling.n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        max_tokens=sampling.max_new_tokens,
    )
    outputs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=sys.stderr.isatty())
    with open(results_path, "w", encoding="utf-8") as handle:
        for index, output in enumerate(outputs):
            completions = [
                asdict(Completion(c.text, "length" if c.finish_reason == "length" else "stop", len(c.token_ids)))
                for c in sorted(output.outputs, key=lambda c: c.index)
            ]
            handle.write(json.dumps({"index": index, "completions": completions}) + "\n")
    finished = time.perf_counter()
    timing = {"import_s": imported - started, "engine_start_s": engine_ready - imported, "generate_s": finished - engine_ready}
    Path(results_path).with_name("timing.json").write_text(json.dumps(timing))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="vLLM generation worker (run by VLLMBackend)")
    parser.add_argument("request")
    parser.add_argument("results")
    arguments = parser.parse_args()
    _run_worker(arguments.request, arguments.results)
