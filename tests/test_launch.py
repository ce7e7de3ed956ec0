"""launch=ddp: the Hydra process starts each round's training phase as a worker under `accelerate
launch` with 2 real processes (gloo on the CPU: launch.device=cpu, so the same on a machine with one GPU),
which share every batch; the run ends as the in-process run does, and the round's record says how many
processes trained it. More processes than visible GPUs is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rationale_loop.phases.launch import check_devices, launch_command, worker_env
from rationale_loop.loop import run_loop

from test_config import compose_config
from test_run_safety import QUICK


@pytest.mark.slow
def test_ddp_worker_rounds_match_the_in_process_run(tmp_path):
    # objective=sft: round 1 trains without needing samples (a 3-step SFT model writes few valid ones).
    common = [*QUICK, "rounds=1", "objective=sft", "rank.steps=2", f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models"]
    local = run_loop(compose_config(*common, "run=local"))
    ddp = run_loop(compose_config(*common, "run=ddp", "launch=ddp", "launch.device=cpu"))
    assert [r["round"] for r in ddp] == [r["round"] for r in local] == [0, 1]
    for k in (0, 1):
        summary = json.loads((tmp_path / f"runs/ddp/round_{k:02d}/train.json").read_text())
        assert summary["train_processes"] == 2
        assert json.loads((tmp_path / f"runs/local/round_{k:02d}/train.json").read_text())["train_processes"] == 1
        a, b = (load_file(str(tmp_path / f"runs/{run}/round_{k:02d}/checkpoint/model.safetensors")) for run in ("local", "ddp"))
        assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-4, f"round {k}"


@pytest.mark.slow
def test_a_ddp_round_with_nothing_to_train_is_written_by_the_main_process_alone(tmp_path, capfd):
    """Replies of 2 tokens are never correct, so round 1 mines no pair and no Accelerator is made: the
    main process alone still writes the checkpoint (every process once wrote it at the same moment, and
    the evaluation then read a half-replaced folder)."""
    overrides = [*QUICK, "rounds=1", "generate.max_new_tokens=2", "launch=ddp", "launch.device=cpu",
                 f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=idle"]
    capfd.readouterr()
    assert [r["round"] for r in run_loop(compose_config(*overrides))] == [0, 1]
    output = "".join(capfd.readouterr())
    assert output.count("round 1: nothing to train on") == 2, "both processes reached the round's training"
    assert output.count("round 1: own pairs ranked right") == 1, "only the main process measured and wrote"
    assert (tmp_path / "runs/idle/round_01/eval.jsonl").exists()


def test_launch_command_names_the_kind_and_processes(tmp_path):
    cfg = compose_config("launch=deepspeed", "launch.num_processes=8", "launch.extra_args=[--main_process_port,29600]").launch
    command = launch_command(cfg, tmp_path / "run", 3)
    assert command[command.index("--num_processes") + 1] == "8" and "--use_deepspeed" in command
    assert command[command.index("--zero_stage") + 1] == "2" and "29600" in command
    assert command[-4:] == ["-m", "rationale_loop.worker", str(tmp_path / "run"), "3"]


@pytest.mark.slow
def test_a_killed_worker_fails_the_round_in_words_and_the_next_call_resumes_it(tmp_path, monkeypatch, capfd):
    import pytest

    from rationale_loop.config.errors import UserError
    from rationale_loop.run.faults import KILL_AT

    overrides = [*QUICK, "launch=ddp", "launch.device=cpu", "sft.save_every=1", f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=k"]
    monkeypatch.setenv(KILL_AT, "train_step:2")  # only the workers train, so only they pass this point
    with pytest.raises(UserError, match="the training worker \\(ddp, 2 processes\\) failed"):
        run_loop(compose_config(*overrides))
    assert (tmp_path / "runs/k/round_00/train_state.pt").exists() and not (tmp_path / "runs/k/round_00/checkpoint").exists()
    monkeypatch.delenv(KILL_AT)
    capfd.readouterr()
    assert [r["round"] for r in run_loop(compose_config(*overrides))] == [0]
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count("sft: resuming from step 2 of 3") == 2, "both worker processes resume from the saved step"


def _gpus(monkeypatch, count: int) -> None:
    """Pretend this machine has `count` GPUs (the check reads torch.cuda, nothing else)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_more_processes_than_gpus_is_refused_before_any_work(tmp_path, monkeypatch):
    import pytest

    from rationale_loop.config.errors import UserError

    _gpus(monkeypatch, 1)
    overrides = [*QUICK, "launch=ddp", "launch.num_processes=2", f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=r"]
    with pytest.raises(UserError, match=r"launch.num_processes=2 needs one GPU per process, and 1 GPU\(s\) are visible") as refused:
        run_loop(compose_config(*overrides))
    assert "\n" not in str(refused.value) and "launch.device=cpu" in str(refused.value)
    assert not (tmp_path / "runs").exists(), "refused before the run directory was made"
    # As many processes as GPUs, the CPU on purpose, or (auto) no GPU at all: no refusal.
    check_devices(compose_config("launch=ddp", "launch.num_processes=1").launch)
    check_devices(compose_config("launch=ddp", "launch.device=cpu").launch)
    _gpus(monkeypatch, 0)
    check_devices(compose_config("launch=ddp").launch)
    with pytest.raises(UserError, match="0 GPU"):
        check_devices(compose_config("launch=ddp", "launch.device=cuda").launch)


def test_launch_device_cpu_hides_the_gpus_from_the_workers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert worker_env(compose_config("launch=ddp", "launch.device=cpu").launch)["CUDA_VISIBLE_DEVICES"] == ""
    assert worker_env(compose_config("launch=ddp").launch)["CUDA_VISIBLE_DEVICES"] == "0,1"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_machines(port: int) -> list[str]:
    """Overrides for two "machines" on this host, one training process each, meeting at `port`."""
    return ["launch=ddp", "launch.device=cpu", "launch.num_processes=2", "launch.num_machines=2", "launch.main_address=127.0.0.1",
            f"launch.main_port={port}"]


def run_on_two_machines(machines: list[str], log: Path) -> Path:
    """Machine 0's loop in this process and machine 1's `join` beside it (its output in `log`), to their end."""
    import os
    import subprocess
    import sys

    with log.open("w") as output:
        joiner = subprocess.Popen([sys.executable, "-m", "rationale_loop", "join", *machines, "launch.machine_rank=1"],
                                  stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        try:
            run_loop(compose_config(*machines))
            assert joiner.wait(timeout=120) == 0, log.read_text()[-2000:]
        finally:
            joiner.kill()
    return log


@pytest.mark.slow
def test_two_machines_on_localhost_train_each_round_together(tmp_path):
    """launch.num_machines=2 as two "machines" on this host: machine 0 runs the loop, machine 1 `join`s it.
    Every round's training is one process on each machine (train.json's shares, gathered from the
    processes themselves), and the weights equal one process's."""
    common = [*QUICK, "rounds=1", "objective=sft", "rank.steps=2", f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models"]
    run_loop(compose_config(*common, "run=local"))
    machines = [*common, "run=two", *two_machines(_free_port())]
    log = run_on_two_machines(machines, tmp_path / "join.log")
    assert "machine 1 took part in 2 launch(es)" in log.read_text()
    for k in (0, 1):
        two = json.loads((tmp_path / f"runs/two/round_{k:02d}/train.json").read_text())
        one = json.loads((tmp_path / f"runs/local/round_{k:02d}/train.json").read_text())
        assert two["train_processes"] == 2 and sorted(s["machine"] for s in two["train_shares"]) == [0, 1]
        assert all(s["items"] > 0 for s in two["train_shares"]), "each machine trained on part of every round"
        assert sum(s["items"] for s in two["train_shares"]) == one["train_shares"][0]["items"]
        a, b = (load_file(str(tmp_path / f"runs/{run}/round_{k:02d}/checkpoint/model.safetensors")) for run in ("local", "two"))
        assert max((a[n] - b[n]).abs().max().item() for n in a) < 1e-4, f"round {k}"
    assert not list((tmp_path / "runs/two").glob("round_*/.launch-*.json")), "tickets are removed when their launch ends"


def test_fsdp_and_deepspeed_on_the_cpu_are_refused_before_any_work(tmp_path, monkeypatch):
    """accelerate runs FSDP and DeepSpeed on GPUs only: on the CPU it would train as plain DDP (measured:
    every FSDP process held every parameter), so the launch is refused rather than run as something else."""
    import pytest

    from rationale_loop.config.errors import UserError

    for kind in ("fsdp", "deepspeed"):
        overrides = [*QUICK, f"launch={kind}", "launch.device=cpu", f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=r"]
        with pytest.raises(UserError, match=f"launch={kind} needs GPUs \\(launch.device=cpu\\).*use launch=ddp on the CPU") as refused:
            run_loop(compose_config(*overrides))
        assert "\n" not in str(refused.value)
    _gpus(monkeypatch, 0)
    with pytest.raises(UserError, match="launch=fsdp needs GPUs \\(this machine has no visible GPU\\)"):
        check_devices(compose_config("launch=fsdp").launch)
    assert not (tmp_path / "runs").exists(), "refused before the run directory was made"
    _gpus(monkeypatch, 2)
    check_devices(compose_config("launch=fsdp").launch)  # GPUs visible: FSDP is accelerate's to run
