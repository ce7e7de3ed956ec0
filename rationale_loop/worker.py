"""The training phase of one round, as a process of its own: `python -m rationale_loop.worker <run> <k>`,
started by rationale_loop/phases/launch.py under `accelerate launch` (each of its processes runs this). The
round's config.yaml, written when the round opened, is the phase's spec: the worker builds the run's
context from it and trains from the files the round's earlier phases wrote, with the same code as the
in-process phase (phases/train.py). The Hydra process that started it holds the run's lock."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from rationale_loop.phases.context import RunContext
from rationale_loop.phases.train import train_here
from rationale_loop.run.rundir import round_dir


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run, k = Path(argv[0]), int(argv[1])
    cfg = OmegaConf.load(round_dir(run, k) / "config.yaml")
    # Where the run is now (it may have moved since the config was written); never fork again.
    cfg.output_root, cfg.run, cfg.init_from = str(run.parent), run.name, None
    train_here(RunContext(cfg), k)
    import torch.distributed as dist

    if dist.is_initialized():  # every process waits for the main one's writes, then the group is torn down
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
