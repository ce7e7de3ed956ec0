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
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

from rationale_loop.generate.base import Completion, Sampling

log = logging.getLogger(__name__)
PARENT_PID = "RATIONALE_LOOP_PARENT_PID"  # set for the worker, so it can tell that its parent has died


class VLLMBackend:
    def __init__(
        self,
        checkpoint: str | Path,
        engine: dict[str, Any],
        python: str | None = None,
        lora: str | Path | None = None,
        chunk_size: int = 512,
    ):
        self.checkpoint = str(checkpoint)
        self.engine = engine
        self.python = python or sys.executable
        self.lora = str(lora) if lora else None
        self.chunk_size = chunk_size
        self.last_timing: dict[str, float] = {}  # the worker's own clock: import, engine start, generation

    def generate(
        self, prompts: Sequence[str], sampling: Sampling, skip: Collection[int] = ()
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Results stream back chunk by chunk while the worker runs, so the caller can save each
        chunk before the next one is sampled: a crash loses at most the chunk in flight."""
        skip = set(skip)
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
                    "skip": sorted(skip),
                    "chunk_size": self.chunk_size,
                })
            )
            command = [self.python, "-m", "rationale_loop.generate.vllm", str(request), str(results)]
            wanted = len(prompts) - len(skip)
            log.info("vllm: generating %d x %d in a child process (%s)", wanted, sampling.n, self.python)
            worker = subprocess.Popen(command, env={**_worker_env(), PARENT_PID: str(os.getpid())})
            seen = set()
            timing = Path(tmp) / "timing.json"  # the worker writes it after its last result
            try:
                for row in _follow(results, worker, timing):
                    seen.add(row["index"])
                    yield row["index"], [Completion(**c) for c in row["completions"]]
            finally:
                if worker.poll() is None:  # the caller stopped early: do not leave the engine running
                    worker.kill()
                    worker.wait()
            if worker.returncode != 0 and not timing.exists():
                raise RuntimeError(f"the vLLM worker failed with exit code {worker.returncode}: {' '.join(command)}")
            self.last_timing = json.loads(timing.read_text()) if timing.exists() else {}
            if len(seen) != wanted:
                raise RuntimeError(f"the vLLM worker returned {len(seen)} of {wanted} prompts")


def _follow(path: Path, process: subprocess.Popen, finished_marker: Path, grace_s: float = 60.0) -> Iterator[dict[str, Any]]:
    """The JSON lines of a file another process is appending to, until that process ends; a line is
    taken only once its newline is there (bytes are decoded a whole line at a time, so a character
    split across two writes is never cut). A worker that wrote `finished_marker` (all its output) but
    has not exited `grace_s` later is killed: an engine hanging at shutdown must not hang the round."""
    buffer = b""
    handle = None
    marked_at = None
    while True:
        finished = process.poll() is not None  # read after checking, so nothing written last is missed
        if handle is None and path.exists():
            handle = path.open("rb")
        if handle is not None:
            buffer += handle.read()
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line.decode("utf-8"))
        if finished:
            break
        if marked_at is None and finished_marker.exists():
            marked_at = time.monotonic()
        if marked_at is not None and time.monotonic() - marked_at > grace_s:
            log.warning("vllm: the worker wrote all its results but has not exited after %.0f s; killing it", grace_s)
            process.kill()
            process.wait()
        time.sleep(0.2)
    if handle is not None:
        handle.close()


def _die_with_parent() -> None:
    """Linux: the worker asks for SIGKILL when its parent dies, so a killed round leaves no engine
    holding the GPU. Done by the worker itself (not a preexec_fn, which can deadlock a threaded
    parent); a parent already gone by then ends it at once."""
    expected = os.environ.get(PARENT_PID)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if expected and os.getppid() != int(expected):
        os._exit(1)


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
    _die_with_parent()
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
    skip = set(request["skip"])
    chunk_size = max(1, request["chunk_size"] or len(prompts))
    greedy = sampling.temperature <= 0
    # No per-request seed: on vLLM's CPU build a seeded request whose prefill is split into chunks fails
    # ("CPU Generator does not use offset"), and a shared per-request seed would give sample i of every
    # prompt the same stream. Instead every chunk reseeds the global generators from its number.
    params = SamplingParams(
        n=sampling.n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        stop=list(sampling.stop) or None,
    )
    asked = _prompt_reader(llm, prompts, sampling.reply_end)
    with open(results_path, "a", encoding="utf-8") as handle:
        for chunk_number, start in enumerate(range(0, len(prompts), chunk_size)):
            indices = range(start, min(start + chunk_size, len(prompts)))
            if all(i in skip for i in indices):
                continue
            _reseed(sampling.seed * 1_000_003 + chunk_number)
            # The whole chunk, skipped prompts too: the batch the engine sees is the one an
            # uninterrupted run saw.
            outputs = llm.generate([asked(i) for i in indices], params, lora_request=lora_request, use_tqdm=sys.stderr.isatty())
            for index, output in zip(indices, outputs):
                if index in skip:
                    continue
                completions = [
                    asdict(Completion(c.text, "length" if c.finish_reason == "length" else "stop", len(c.token_ids)))
                    for c in sorted(output.outputs, key=lambda c: c.index)
                ]
                handle.write(json.dumps({"index": index, "completions": completions}) + "\n")
            handle.flush()
    finished = time.perf_counter()
    timing = {"import_s": imported - started, "engine_start_s": engine_ready - imported, "generate_s": finished - engine_ready}
    Path(results_path).with_name("timing.json").write_text(json.dumps(timing))


def _prompt_reader(llm: Any, prompts: list[str], reply_end: str | None) -> Any:
    """Prompt i as the engine is given it: with the format's reply end, token ids read as training reads
    the prompt (encode.Encoder.prompt_ids: a special-token string typed in a question is text); without,
    the text, which vLLM tokenizes itself."""
    if reply_end is None:
        return lambda i: prompts[i]
    from rationale_loop.encode import Encoder

    encoder = Encoder(llm.get_tokenizer(), max_length=1 << 30, reply_end=reply_end)
    return lambda i: {"prompt_token_ids": list(encoder.prompt_ids(prompts[i]))}


def _reseed(seed: int) -> None:
    import random

    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="vLLM generation worker (run by VLLMBackend)")
    parser.add_argument("request")
    parser.add_argument("results")
    arguments = parser.parse_args()
    _run_worker(arguments.request, arguments.results)
