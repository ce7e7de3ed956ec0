"""generate.workers=2: a round's sampling shared by two real processes under `accelerate launch` (on the
CPU), each dealt whole seed units of the pool (generate/shards.py). The split is asserted from the workers'
own receipts (two processes, disjoint shares that cover the pool), the merged generations.jsonl is
byte-identical to one process's, and after one worker is killed the next call keeps every question either
worker finished and still ends with the same bytes."""

from __future__ import annotations

import json

import pytest

from rationale_loop.config.errors import UserError
from rationale_loop.run.faults import KILL_AT
from rationale_loop.generate.shards import deal
from rationale_loop.phases.launch import generation_command
from rationale_loop.loop import run_loop
from rationale_loop.run.records import read_jsonl

from test_config import compose_config
from test_run_safety import QUICK

# Batches of 4 prompts: 5 seed units for a pool of 20, dealt 3 and 2; the 8 held-out questions in 2.
COMMON = [*QUICK, "rounds=1", "generate.n=2", "task.pool_size=20", "generate.batch_size=4", "eval.batch_size=4", "rank.steps=1"]


def _overrides(root, run: str, *extra: str) -> list[str]:
    return [*COMMON, f"output_root={root}/runs", f"model.cache_dir={root}/models", f"run={run}", *extra]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The bytes of round 1's generations.jsonl sampled by one process (in the Hydra process), and of every
    round's eval.jsonl."""
    root = tmp_path_factory.mktemp("one")
    run_loop(compose_config(*_overrides(root, "one")))
    evals = [(root / f"runs/one/round_{k:02d}/eval.jsonl").read_bytes() for k in (0, 1)]
    return (root / "runs/one/round_01/generations.jsonl").read_bytes(), evals


@pytest.mark.slow
def test_two_sampling_workers_split_the_pool_and_write_one_workers_bytes(tmp_path, one_worker):
    generations, evals = one_worker
    run_loop(compose_config(*_overrides(tmp_path, "two", "generate.workers=2")))
    out = tmp_path / "runs/two/round_01"
    assert (out / "generations.jsonl").read_bytes() == generations
    record = json.loads((out / "sample_workers.json").read_text())
    shards, receipts = record["shards"], record["receipts"]
    questions = {row["question_id"] for row in read_jsonl(out / "generations.jsonl")}
    assert record["workers"] == 2 and record["backend"] == "hf" and record["seed_units"] == 5
    assert all(shards) and not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == questions
    assert [r["rank"] for r in receipts] == [0, 1] and receipts[0]["pid"] != receipts[1]["pid"], "two processes"
    assert [r["questions"] for r in receipts] == [len(s) for s in shards] == [12, 8]
    assert not list(out.glob("generations.jsonl.partial*")) and not (out / ".worker_receipts").exists()
    # The held-out evaluation of both rounds in the two workers too: 8 questions in batches of eval.batch_size.
    for k in (0, 1):
        assert (tmp_path / f"runs/two/round_{k:02d}/eval.jsonl").read_bytes() == evals[k]
        record = json.loads((tmp_path / f"runs/two/round_{k:02d}/evaluate_workers.json").read_text())
        assert [r["questions"] for r in record["receipts"]] == [4, 4]


@pytest.mark.slow
def test_a_killed_sampling_worker_fails_the_round_in_words_and_the_next_call_keeps_what_was_finished(tmp_path, one_worker, monkeypatch):
    overrides = _overrides(tmp_path, "kill", "generate.workers=2")
    out = tmp_path / "runs/kill/round_01"
    monkeypatch.setenv(KILL_AT, "generate:2@1")  # worker 1 dies after its second question; worker 0 is stopped
    with pytest.raises(UserError, match="round 1: a sample worker failed") as failed:
        run_loop(compose_config(*overrides))
    assert "\n" not in str(failed.value)
    kept = {row["question_id"] for partial in out.glob("generations.jsonl.partial.worker-*") for row in read_jsonl(partial)}
    worker_1 = {row["question_id"] for row in read_jsonl(out / "generations.jsonl.partial.worker-1-of-2")}
    # Worker 0's own progress when it was stopped depends on the two processes' timing: kept holds it.
    assert len(worker_1) == 2 and kept >= worker_1
    monkeypatch.delenv(KILL_AT)
    run_loop(compose_config(*overrides))
    record = json.loads((out / "sample_workers.json").read_text())
    assert not {q for shard in record["shards"] for q in shard} & kept, "no finished question is sampled again"
    assert sum(r["questions"] for r in record["receipts"]) == 20 - len(kept)
    assert (out / "generations.jsonl").read_bytes() == one_worker[0]


def test_deal_gives_whole_units_round_robin_and_only_what_is_left():
    units = [[5, 1], [0, 2], [3], [4]]
    assert deal(units, range(6), 2) == [[5, 1, 3], [0, 2, 4]]
    # A resumed phase: unit [0, 2] is done and not dealt; [5, 1] keeps only its unsampled prompt.
    assert deal(units, {1, 3, 4}, 2) == [[1, 4], [3]]
    assert deal(units, {1}, 3) == [[1], [], []]
    with pytest.raises(ValueError):
        deal(units, {1}, 0)


def test_generation_command_starts_the_sample_worker_on_every_process(tmp_path):
    command = generation_command(4, tmp_path / "run", 2, "sample", ["0", "1", "2", "3"])
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[-6:] == ["-m", "rationale_loop.sample_worker", str(tmp_path / "run"), "2", "sample", "0,1,2,3"]


def test_more_sampling_workers_than_gpus_is_refused_before_any_work(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(UserError, match=r"generate.workers=3 with 1 GPU\(s\) per engine needs 3 GPUs on a machine, and 2 are visible") as refused:
        run_loop(compose_config(*_overrides(tmp_path, "r", "generate.workers=3", "generate.backend=hf")))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "runs").exists(), "refused before the run directory was made"


@pytest.mark.slow
def test_sampling_workers_on_two_machines_write_one_workers_bytes(tmp_path):
    """generate.workers=2 over launch.num_machines=2 ("machines" on this host; machine 1 `join`s): one
    sampling worker on each machine, and the same bytes as one process sampling from the same SFT
    checkpoint (a fork of round 0: SFT over two machines gives other weights in the last bits)."""
    from test_launch import _free_port, run_on_two_machines, two_machines

    machines = _overrides(tmp_path, "two", "generate.workers=2", *two_machines(_free_port()))
    log = run_on_two_machines(machines, tmp_path / "join.log")
    out = tmp_path / "runs/two/round_01"
    run_loop(compose_config(*_overrides(tmp_path, "one", f"init_from={tmp_path}/runs/two/round_00")))
    assert (out / "generations.jsonl").read_bytes() == (tmp_path / "runs/one/round_01/generations.jsonl").read_bytes()
    receipts = json.loads((out / "sample_workers.json").read_text())["receipts"]
    assert [(r["rank"], r["machine"]) for r in receipts] == [(0, 0), (1, 1)] and all(r["questions"] > 0 for r in receipts)
    assert "round 1's sample phase on machine 1" in log.read_text()
