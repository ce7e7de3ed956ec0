"""The worker side of the vLLM backend (vllm.py holds the parent's side and the protocol between the two):
a child process that starts vLLM's offline engine once and serves each request sent on its control pipe,
appending each chunk's completions to the request's results file as they come.

Run as `python -m rationale_loop.generate.vllm_engine --serve DIR` by `VLLMBackend`, in the interpreter of
`generate.python`, the only place vLLM is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from rationale_loop.generate.base import Completion, Sampling
from rationale_loop.generate.vllm import PARENT_PID, parse_control_line


def _die_with_parent() -> None:
    """Linux: the worker asks for SIGKILL when its parent dies, so a killed round leaves no engine
    holding the GPU. Done by the worker itself (not a preexec_fn, which can deadlock a threaded
    parent); a parent already gone by then ends it at once. (Linux sends it when the thread that
    started the worker ends: start a backend's engine from a thread that outlives its use. The control
    pipe's end of file stops the worker too, once it is idle.)"""
    expected = os.environ.get(PARENT_PID)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if expected and os.getppid() != int(expected):
        os._exit(1)



def _serve(directory: str) -> None:
    _die_with_parent()
    root = Path(directory)
    spec = json.loads((root / "engine.json").read_text())
    messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancelled: set[int] = set()
    closing = threading.Event()
    threading.Thread(target=_read_control, args=(sys.stdin.fileno(), messages, cancelled, closing), daemon=True).start()

    started = time.perf_counter()
    from vllm import LLM

    imported = time.perf_counter()
    engine = {k: v for k, v in spec["engine"].items() if v is not None}
    lora_request = None
    if spec["lora"]:
        from vllm.lora.request import LoRARequest

        engine.setdefault("enable_lora", True)
        lora_request = LoRARequest("round_adapter", 1, spec["lora"])
    llm = LLM(model=spec["model"], seed=spec["seed"], **engine)
    startup = {"import_s": imported - started, "engine_start_s": time.perf_counter() - imported}
    (root / "ready.json").write_text(json.dumps({**startup, "gpu_memory_utilization": _engine_setting(llm, "gpu_memory_utilization")}))

    while (message := messages.get()) is not None:
        request_id = message["id"]
        try:
            status, seconds = _serve_request(llm, message, lambda: closing.is_set() or request_id in cancelled, lora_request)
        except Exception:  # the engine may be left in any state: report, and end with it
            error = traceback.format_exc()
            sys.stderr.write(error)
            _append_line(message["results"], {"end": "error", "error": error[-4000:]})
            sys.stderr.flush()
            sys.exit(1)
        _append_line(message["results"], {"end": status, "timing": {**startup, "generate_s": seconds}})
        startup = {"import_s": 0.0, "engine_start_s": 0.0}


def _read_control(fd: int, messages: queue.Queue, cancelled: set[int], closing: threading.Event) -> None:
    """The control pipe, read beside the engine: a cancel or close is seen while a request runs. (Read
    from the file descriptor: a buffered sys.stdin's lock, held by this thread, would abort the
    interpreter's exit.)"""
    for line in _lines(fd):
        try:
            message = parse_control_line(line)
        except ValueError as error:
            print(f"vllm worker: ignored {error}", file=sys.stderr, flush=True)
            continue
        if message["op"] == "generate":
            messages.put(message)
        elif message["op"] == "cancel":
            cancelled.add(message["id"])
        else:
            break
    closing.set()  # close, or the parent has gone: requests still queued end as cancelled
    messages.put(None)


def _lines(fd: int) -> Iterator[bytes]:
    buffer = b""
    while chunk := os.read(fd, 1 << 16):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())


def _serve_request(llm: Any, message: dict[str, Any], stopped: Callable[[], bool], lora_request: Any) -> tuple[str, float]:
    from vllm import SamplingParams

    begun = time.perf_counter()
    request = json.loads(Path(message["request"]).read_text())
    sampling = Sampling(**{**request["sampling"], "stop": tuple(request["sampling"]["stop"])})
    prompts = request["prompts"]
    skip = set(request["skip"])
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
    # What an earlier request left in the prefix cache would change this one's batches (and so its
    # numbers): every request starts from an empty cache, as on a fresh engine.
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()
    asked = _prompt_reader(llm, prompts, sampling.reply_end)
    with open(message["results"], "a", encoding="utf-8") as handle:
        for chunk_number, indices in enumerate(prompt_chunks(len(prompts), request["chunk_size"])):
            if all(i in skip for i in indices):
                continue
            if stopped():
                return "cancelled", time.perf_counter() - begun
            _reseed(sampling.seed * 1_000_003 + chunk_number)
            # The whole chunk, skipped prompts too: the batch the engine sees is the one an
            # uninterrupted run saw.
            outputs = llm.generate([asked(i) for i in indices], params, lora_request=lora_request, use_tqdm=False)
            for index, output in zip(indices, outputs):
                if index in skip:
                    continue
                completions = [
                    asdict(Completion(c.text, "length" if c.finish_reason == "length" else "stop", len(c.token_ids)))
                    for c in sorted(output.outputs, key=lambda c: c.index)
                ]
                handle.write(json.dumps({"index": index, "completions": completions}) + "\n")
            handle.flush()
    return "finished", time.perf_counter() - begun


def prompt_chunks(count: int, chunk_size: int | None) -> list[range]:
    """The prompt indices of each engine call, in order; chunk c is seeded by c, so a resumed request, or a
    generation worker given some of the chunks (generate.workers), samples each exactly as a whole run."""
    size = max(1, chunk_size or count)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _append_line(path: str, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _engine_setting(llm: Any, name: str) -> Any:
    """A cache setting as the engine holds it (None where this vLLM keeps it elsewhere)."""
    try:
        return getattr(llm.llm_engine.vllm_config.cache_config, name)
    except AttributeError:
        return None


def _prompt_reader(llm: Any, prompts: list[str], reply_end: str | None) -> Any:
    """Prompt i as the engine is given it: with the format's reply end, token ids read as training reads
    the prompt (encode.Encoder.prompt_ids: a special-token string typed in a question is text); without,
    the text, which vLLM tokenizes itself."""
    if reply_end is None:
        return lambda i: prompts[i]
    from rationale_loop.data.encode import Encoder

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
    parser.add_argument("--serve", required=True, metavar="DIR", help="the backend's folder (engine.json)")
    _serve(parser.parse_args().serve)
