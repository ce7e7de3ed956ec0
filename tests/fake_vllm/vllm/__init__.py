"""A stand-in for vLLM's offline `LLM`, for testing the vLLM backend's worker protocol without vLLM
(tests/test_vllm_worker.py puts this folder on the worker's PYTHONPATH). It samples from the global
torch generator, as vLLM's sampler does for requests without a seed, so the worker's reseeding decides
its output. Environment: FAKE_VLLM_LOG (a file: one JSON line per engine start, its arguments),
FAKE_VLLM_CHUNK_S (seconds each generate call takes). Prompts "CRASH" and model "FAIL" raise."""

import json
import os
import time
from types import SimpleNamespace

import torch


class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, stop=None):
        self.n, self.temperature, self.top_p, self.max_tokens, self.stop = n, temperature, top_p, max_tokens, stop


class LLM:
    def __init__(self, model, seed=0, **engine):
        print(f"fake vllm: starting an engine for {model}", flush=True)
        if model == "FAIL":
            raise RuntimeError("fake vllm: no such model")
        if os.environ.get("FAKE_VLLM_LOG"):
            with open(os.environ["FAKE_VLLM_LOG"], "a") as handle:
                handle.write(json.dumps({"model": model, "seed": seed, **engine}) + "\n")
        cache = SimpleNamespace(gpu_memory_utilization=engine.get("gpu_memory_utilization", 0.9))
        self.llm_engine = SimpleNamespace(vllm_config=SimpleNamespace(cache_config=cache))
        self.prefix_cache_resets = 0

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1
        return True

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        time.sleep(float(os.environ.get("FAKE_VLLM_CHUNK_S", "0")))
        outputs = []
        for prompt in prompts:
            if prompt == "CRASH":
                raise RuntimeError("fake vllm: the engine failed on this prompt")
            completions = []
            for k in range(params.n):
                noise = "greedy" if params.temperature == 0 else str(torch.randint(10**9, ()).item())
                text = f"{prompt}|{params.max_tokens}|{noise}"
                for stop in params.stop or ():
                    text = text.split(stop)[0]
                completions.append(SimpleNamespace(index=k, text=text, finish_reason="stop", token_ids=[1] * min(3, params.max_tokens)))
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs
