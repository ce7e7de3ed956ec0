"""`make join`: the part of a run that a machine other than the first plays (launch.num_machines > 1).

Machine 0 runs the run as on one machine (`make loop`, `make round`): it opens each round, mines, evaluates
and writes every record. Only the phases that run under `accelerate launch` span the machines: training
(launch=ddp|fsdp|deepspeed) and, with generate.workers, sampling. Before it starts such a phase, machine 0
writes a ticket into the round's directory, which every machine sees (the run must be on a shared
filesystem: the workers read the round's inputs and write their outputs there):

    round_KK/.launch-<phase>.json    {"phase", "round", "attempt", "command", "env"}: what machine 0 launched

and removes it when the command ends. `make join RUN=name ARGS="launch.machine_rank=R"` on machine R watches
the run for tickets, and for each new one runs the same command with its own machine rank (and, for
sampling, its own GPUs), so accelerate's rendezvous at machine 0's address starts the phase on every
machine at once. It stops once the rounds the run's newest round was configured for (`rounds`) are all
done, or on Ctrl-C. Nothing but the ticket passes between machines beside the launcher's own rendezvous.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rationale_loop.config.errors import UserError
from rationale_loop.phases.launch import TICKET_GLOB, visible_gpu_ids
from rationale_loop.run.records import read_json
from rationale_loop.run.rundir import next_round, round_dir, run_dir

log = logging.getLogger(__name__)


def my_part(command: list[str], machine_rank: int, gpus: list[str]) -> list[str]:
    """Machine 0's launch command as machine `machine_rank` runs it: its own rank and, for a sampling
    worker (whose last argument lists the GPUs its workers share out), its own GPUs."""
    if "--machine_rank" not in command:
        raise UserError(f"the launch ticket's command names no --machine_rank: {' '.join(command)}")
    mine = list(command)
    mine[mine.index("--machine_rank") + 1] = str(machine_rank)
    if "rationale_loop.sample_worker" in mine:
        mine[-1] = ",".join(gpus)
    return mine


def join(cfg: Any, poll_seconds: float = 0.5) -> int:
    """Serve the run's launch tickets as machine launch.machine_rank until its rounds are done; returns
    how many phases this machine took part in."""
    rank = cfg.launch.machine_rank
    if rank < 1:
        raise UserError(f"make join is for machines other than the first: set launch.machine_rank to 1 or more (got {rank}); "
                        "machine 0 runs the run itself (make loop)")
    run = run_dir(cfg)
    log.info("join: machine %d waiting for %s's launches", rank, run)
    served: set[str] = set()
    while not _finished(run):
        for path in sorted(run.glob(f"round_*/{TICKET_GLOB}")):
            try:
                launch = read_json(path)
            except (OSError, ValueError):
                continue  # removed (the phase ended) or being written: looked at again next time
            if launch["attempt"] in served:
                continue
            served.add(launch["attempt"])
            command = my_part(launch["command"], rank, visible_gpu_ids())
            log.info("join: round %d's %s phase on machine %d: %s", launch["round"], launch["phase"], rank, " ".join(command))
            status = subprocess.run(command, check=False, env={**os.environ, **launch.get("env", {})}).returncode
            if status != 0:
                log.warning("join: round %d's %s phase ended with exit status %d here; waiting for machine 0's next launch",
                            launch["round"], launch["phase"], status)
        time.sleep(poll_seconds)
    log.info("join: %s has finished its rounds; machine %d took part in %d launch(es)", run, rank, len(served))
    return len(served)


def _finished(run: Path) -> bool:
    """Whether every round the run's newest round was configured for has DONE (never, before it starts)."""
    if not run.is_dir():
        return False
    k = next_round(run)
    newest = round_dir(run, k) if (round_dir(run, k) / "config.yaml").exists() else round_dir(run, k - 1)
    if k == 0 or not (newest / "config.yaml").exists():
        return False
    return k > OmegaConf.load(newest / "config.yaml").rounds
