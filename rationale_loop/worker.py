"""The training phase of one round, as a process of its own: `python -m rationale_loop.worker <run> <k>`,
started by rationale_loop/launch.py under `accelerate launch` (each of its processes runs this). It
reads the round's config.yaml and the files the round's earlier phases wrote, and runs the same code
as the in-process phase. The Hydra process that started it holds the run's lock."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    from rationale_loop.loop import Run
    from rationale_loop.rundir import round_dir

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run, k = Path(argv[0]), int(argv[1])
    cfg = OmegaConf.load(round_dir(run, k) / "config.yaml")
    # Where the run is now (it may have moved since the config was written); never fork again.
    cfg.output_root, cfg.run, cfg.init_from = str(run.parent), run.name, None
    Run(cfg, rebuild_index=False).train_phase(k)
    import torch.distributed as dist

    if dist.is_initialized():  # every process waits for the main one's writes, then the group is torn down
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
