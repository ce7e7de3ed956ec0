"""A round's training phase as its own processes.

Hydra's process never runs under a distributed launcher: with `launch=ddp|fsdp|deepspeed` it starts
`accelerate launch ... -m rationale_loop.worker <run> <round>` and waits. Every worker process rebuilds
the phase's training items from the round directory (the files the earlier phases wrote and the round's
config.yaml), so nothing but paths crosses the boundary; each trains on its share of every batch, and the
main process writes train.json, the adapter and the checkpoint. A worker killed mid-phase leaves the
training state of its last save, and the next call resumes from it, as in process.

Devices (launch.device): "auto" puts each process on the GPU of its local rank (accelerate's --multi_gpu
does the mapping) when GPUs are visible, and on the CPU over gloo when none is; "cuda" requires GPUs;
"cpu" hides the GPUs from the workers so that they train on the CPU over gloo on purpose (tests, and
machines whose GPU is busy generating). More processes than visible GPUs is refused before any work:
accelerate would otherwise put two ranks on one GPU (rank % count), and NCCL fails there mid-run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rationale_loop.errors import UserError

log = logging.getLogger(__name__)

KIND_FLAGS = {"ddp": ["--multi_gpu"], "fsdp": ["--use_fsdp"], "deepspeed": ["--use_deepspeed"]}
#: launch.kind's values: in this process, or a worker under `accelerate launch` with KIND_FLAGS.
LAUNCH_KINDS = ("local", *KIND_FLAGS)
#: launch.device's values (the module's docstring says what each does).
LAUNCH_DEVICES = ("auto", "cuda", "cpu")
# launch.kind -> the launch keys it reads (local, in this process, reads none): its schema within LaunchConfig.
PROCESS_KEYS = ("num_processes", "device", "config_file", "extra_args")
LAUNCH_OPTION_KEYS = {"local": (), "ddp": PROCESS_KEYS, "fsdp": PROCESS_KEYS, "deepspeed": (*PROCESS_KEYS, "zero_stage")}


def launch_command(cfg: Any, run: Path, k: int) -> list[str]:
    """The `accelerate launch` command line for round k's training phase."""
    flags = [*KIND_FLAGS[cfg.kind], "--num_processes", str(cfg.num_processes)]
    if cfg.kind == "deepspeed":
        flags += ["--zero_stage", str(cfg.zero_stage)]
    if cfg.config_file:
        flags = ["--config_file", str(cfg.config_file), *flags]
    if "--num_machines" not in cfg.extra_args and not cfg.config_file:
        flags += ["--num_machines", "1"]
    return accelerate_command([*flags, *map(str, cfg.extra_args)], "rationale_loop.worker", [str(run), str(k)])


def accelerate_command(flags: list[str], module: str, args: list[str]) -> list[str]:
    """`accelerate launch FLAGS -m MODULE ARGS`. Without the two flags added here accelerate guesses (and
    warns): mixed precision comes from model.dtype, not the launcher, and nothing is compiled."""
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", module, *args]


def generation_command(workers: int, run: Path, k: int, gpus: list[str]) -> list[str]:
    """The `accelerate launch` command line for round k's sampling in `workers` processes on this machine
    (rationale_loop/sample_worker.py); `gpus` are the GPU ids the workers share out (none: the CPU)."""
    flags = ["--multi_gpu", "--num_processes", str(workers), "--num_machines", "1"]
    return accelerate_command(flags, "rationale_loop.sample_worker", [str(run), str(k), ",".join(gpus)])


def visible_gpu_ids() -> list[str]:
    """The ids of the GPUs this process can see, as CUDA_VISIBLE_DEVICES names them (or 0..count-1)."""
    count = visible_gpus()
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if len(named) >= count else [str(i) for i in range(count)]


def check_generation_gpus(workers: int, gpus_per_worker: int) -> list[str]:
    """The visible GPU ids, refused in one line when GPUs are visible but too few for one engine of
    `gpus_per_worker` GPUs (vLLM's tensor parallel size) per worker; none visible: the workers use the CPU."""
    gpus = visible_gpu_ids()
    if gpus and workers * gpus_per_worker > len(gpus):
        raise UserError(f"generate.workers={workers} with {gpus_per_worker} GPU(s) per engine needs {workers * gpus_per_worker} GPUs, "
                        f"and {len(gpus)} are visible: set generate.workers to at most {len(gpus) // gpus_per_worker}")
    return gpus


def run_generation_workers(workers: int, run: Path, k: int, gpus: list[str]) -> None:
    command = generation_command(workers, run, k, gpus)
    log.info("round %d: sampling in %d worker processes: %s", k, workers, " ".join(command))
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise UserError(f"round {k}: a sampling worker failed with exit status {finished.returncode} (its output is above); "
                        "the next call resumes, each worker keeping the questions it finished")


def visible_gpus() -> int:
    """CUDA devices this process can see (CUDA_VISIBLE_DEVICES applies); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_devices(cfg: Any) -> None:
    """Refuse, in one line, a launch the visible GPUs cannot hold: one process per GPU."""
    device = getattr(cfg, "device", "auto")
    if cfg.kind == "local" or device == "cpu":
        return
    gpus = visible_gpus()
    if device == "auto" and gpus == 0:
        return  # no GPU at all: the processes train on the CPU over gloo, as launch.device=cpu would
    if cfg.num_processes > gpus:
        raise UserError(f"launch.num_processes={cfg.num_processes} needs one GPU per process, and {gpus} GPU(s) are visible: "
                        f"set launch.num_processes to at most {gpus}, or launch.device=cpu to train on the CPU over gloo")


def check_processes(cfg: Any) -> None:
    """Refuse, in one line, training processes (launch=) or sampling workers (generate.workers) that the
    visible GPUs cannot hold, before a run does any work (`cfg` is the whole config)."""
    if cfg.launch.kind != "local":
        check_devices(cfg.launch)
    if cfg.generate.workers > 1:
        from rationale_loop.generate import gpus_per_engine

        check_generation_gpus(cfg.generate.workers, gpus_per_engine(cfg.generate))


def worker_env(cfg: Any) -> dict[str, str]:
    """The workers' environment: with launch.device=cpu, no GPU visible, so that accelerate picks gloo and
    train() the CPU."""
    env = dict(os.environ)
    if getattr(cfg, "device", "auto") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_training_worker(cfg: Any, run: Path, k: int) -> None:
    check_devices(cfg)
    command = launch_command(cfg, run, k)
    log.info("round %d: training in %d %s process(es): %s", k, cfg.num_processes, cfg.kind, " ".join(command))
    finished = subprocess.run(command, check=False, env=worker_env(cfg))
    if finished.returncode != 0:
        raise UserError(f"round {k}: the training worker ({cfg.kind}, {cfg.num_processes} processes) failed with exit "
                        f"status {finished.returncode} (its output is above); the next call resumes from its last saved state")
