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
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from rationale_loop.config.errors import UserError
from rationale_loop.run.records import write_json_atomic
from rationale_loop.run.rundir import round_dir

log = logging.getLogger(__name__)

KIND_FLAGS = {"ddp": ["--multi_gpu"], "fsdp": ["--use_fsdp"], "deepspeed": ["--use_deepspeed"]}
# Kinds accelerate runs only on GPUs: on the CPU (MULTI_CPU) it wraps the model in DDP instead, without a
# word (FSDP1 refuses outright; with --fsdp_version 2 every process was measured holding every parameter),
# and skips DeepSpeed. Refused there rather than run as something else (docs/scaling.md).
GPU_ONLY_KINDS = ("fsdp", "deepspeed")
#: launch.kind's values: in this process, or a worker under `accelerate launch` with KIND_FLAGS.
LAUNCH_KINDS = ("local", *KIND_FLAGS)
#: launch.device's values (the module's docstring says what each does).
LAUNCH_DEVICES = ("auto", "cuda", "cpu")
# launch.kind -> the launch keys it reads (local, in this process, reads none): its schema within LaunchConfig.
PROCESS_KEYS = ("num_processes", "device", "num_machines", "machine_rank", "main_address", "main_port", "config_file", "extra_args")
LAUNCH_OPTION_KEYS = {"local": (), "ddp": PROCESS_KEYS, "fsdp": PROCESS_KEYS, "deepspeed": (*PROCESS_KEYS, "zero_stage")}


def launch_command(cfg: Any, run: Path, k: int) -> list[str]:
    """The `accelerate launch` command line for round k's training phase."""
    flags = [*KIND_FLAGS[cfg.kind], "--num_processes", str(cfg.num_processes)]
    if cfg.kind == "deepspeed":
        flags += ["--zero_stage", str(cfg.zero_stage)]
    if cfg.config_file:
        flags = ["--config_file", str(cfg.config_file), *flags]
    if cfg.num_machines > 1 or ("--num_machines" not in cfg.extra_args and not cfg.config_file):
        flags += machine_flags(cfg)
    return accelerate_command([*flags, *map(str, cfg.extra_args)], "rationale_loop.worker", [str(run), str(k)])


def accelerate_command(flags: list[str], module: str, args: list[str]) -> list[str]:
    """`accelerate launch FLAGS -m MODULE ARGS`. Without the two flags added here accelerate guesses (and
    warns): mixed precision comes from model.dtype, not the launcher, and nothing is compiled."""
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", module, *args]


def machine_flags(cfg: Any) -> list[str]:
    """accelerate's flags for the machines a launch spans (`cfg` a LaunchConfig; one machine unless
    launch.num_machines says more)."""
    if cfg.num_machines == 1:
        return ["--num_machines", "1"]
    return ["--num_machines", str(cfg.num_machines), "--machine_rank", str(cfg.machine_rank),
            "--main_process_ip", str(cfg.main_address), "--main_process_port", str(cfg.main_port)]


def generation_command(workers: int, run: Path, k: int, job: str, gpus: list[str], launch: Any = None) -> list[str]:
    """The `accelerate launch` command line for round k's generation job ("sample" or "evaluate") in
    `workers` processes in all (rationale_loop/sample_worker.py), on the machines of `launch` when it spans
    several (else this one); `gpus` are the GPU ids this machine's workers share out (none: the CPU)."""
    machines = machine_flags(launch) if launch is not None and spans_machines(launch) else ["--num_machines", "1"]
    flags = ["--multi_gpu", "--num_processes", str(workers), *machines]
    return accelerate_command(flags, "rationale_loop.sample_worker", [str(run), str(k), job, ",".join(gpus)])


def spans_machines(cfg: Any) -> bool:
    """Whether a launch (a LaunchConfig) runs on more than this machine."""
    return cfg.kind != "local" and cfg.num_machines > 1


def visible_gpu_ids() -> list[str]:
    """The ids of the GPUs this process can see, as CUDA_VISIBLE_DEVICES names them (or 0..count-1)."""
    count = visible_gpus()
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if len(named) >= count else [str(i) for i in range(count)]


def check_generation_gpus(workers: int, gpus_per_worker: int, machines: int = 1) -> list[str]:
    """This machine's visible GPU ids, refused in one line when GPUs are visible but too few for one engine
    of `gpus_per_worker` GPUs (vLLM's tensor parallel size) per worker of this machine (workers / machines);
    none visible: the workers use the CPU."""
    gpus, here = visible_gpu_ids(), workers // machines
    if gpus and here * gpus_per_worker > len(gpus):
        per_machine = f" ({here} on each of {machines} machines)" if machines > 1 else ""
        raise UserError(f"generate.workers={workers}{per_machine} with {gpus_per_worker} GPU(s) per engine needs {here * gpus_per_worker} "
                        f"GPUs on a machine, and {len(gpus)} are visible: set generate.workers to at most {machines * (len(gpus) // gpus_per_worker)}")
    return gpus


def run_generation_workers(workers: int, run: Path, k: int, job: str, gpus: list[str], launch: Any) -> None:
    command = generation_command(workers, run, k, job, gpus, launch)
    log.info("round %d: the %s phase's generation in %d worker processes: %s", k, job, workers, " ".join(command))
    status = run_launched(command, run, k, job, launch)
    if status != 0:
        raise UserError(f"round {k}: a {job} worker failed with exit status {status} (its output is above); "
                        "the next call resumes, keeping every question the workers finished")


# Machine 0's note to the other machines' `make join` that a launch spanning them has started (join.py).
TICKET_GLOB = ".launch-*.json"


@contextmanager
def ticket(run: Path, k: int, phase: str, command: list[str], env: dict[str, str] | None = None) -> Iterator[Path]:
    """A ticket for round k's `phase` launched by `command` on machine 0 (with `env` set for it, e.g. no
    GPU for launch.device=cpu), there while the block runs."""
    path = round_dir(run, k) / f".launch-{phase}.json"
    write_json_atomic(path, {"phase": phase, "round": k, "attempt": uuid.uuid4().hex, "command": command, "env": env or {}})
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def visible_gpus() -> int:
    """CUDA devices this process can see (CUDA_VISIBLE_DEVICES applies); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_devices(cfg: Any) -> None:
    """Refuse, in one line, a launch the visible GPUs cannot hold: one process per GPU."""
    device = getattr(cfg, "device", "auto")
    if cfg.kind == "local":
        return
    gpus = visible_gpus()
    if cfg.kind in GPU_ONLY_KINDS and (device == "cpu" or gpus == 0):
        where = "launch.device=cpu" if device == "cpu" else "this machine has no visible GPU"
        raise UserError(f"launch={cfg.kind} needs GPUs ({where}): accelerate runs {cfg.kind} on GPUs only, and on the CPU would "
                        "train as plain DDP without saying so; use launch=ddp on the CPU")
    if device == "cpu":
        return
    if device == "auto" and gpus == 0:
        return  # no GPU at all: the processes train on the CPU over gloo, as launch.device=cpu would
    machines = getattr(cfg, "num_machines", 1)
    if cfg.num_processes // machines > gpus:
        each = f" ({cfg.num_processes // machines} on each of {machines} machines)" if machines > 1 else ""
        raise UserError(f"launch.num_processes={cfg.num_processes}{each} needs one GPU per process, and {gpus} GPU(s) are visible: "
                        f"set launch.num_processes to at most {gpus * machines}, or launch.device=cpu to train on the CPU over gloo")


def check_processes(cfg: Any) -> None:
    """Refuse, in one line, training processes (launch=) or sampling workers (generate.workers) that the
    visible GPUs cannot hold, before a run does any work (`cfg` is the whole config)."""
    if cfg.launch.kind != "local":
        check_devices(cfg.launch)
    if cfg.generate.workers > 1:
        from rationale_loop.generate import gpus_per_engine

        machines = cfg.launch.num_machines if spans_machines(cfg.launch) else 1
        check_generation_gpus(cfg.generate.workers, gpus_per_engine(cfg.generate), machines)


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
    status = run_launched(command, run, k, "train", cfg, env=worker_env(cfg))
    if status != 0:
        raise UserError(f"round {k}: the training worker ({cfg.kind}, {cfg.num_processes} processes) failed with exit "
                        f"status {status} (its output is above); the next call resumes from its last saved state")


def run_launched(command: list[str], run: Path, k: int, phase: str, launch: Any, env: dict[str, str] | None = None) -> int:
    """Run an `accelerate launch` command to its end and return its exit status. When the launch spans
    several machines, a ticket (rationale_loop/join.py) tells the other machines' `make join` to start their
    part of it meanwhile; it is removed once the command ends."""
    changed = {name: value for name, value in (env or {}).items() if os.environ.get(name) != value}
    with ticket(run, k, phase, command, changed) if spans_machines(launch) else nullcontext():
        return subprocess.run(command, check=False, env=env).returncode
