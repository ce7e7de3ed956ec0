"""One share of a round's generation (the pool's sampling, or the held-out evaluation), as one of
generate.workers processes: `python -m rationale_loop.sample_worker <run> <k> <sample|evaluate> <gpu ids>`,
started by the Hydra process under `accelerate launch` (rationale_loop/phases/launch.py), which holds the run's
lock and merges the shares (phases/workers.py).

The round's config.yaml and the job's record (<job>_workers.json) say everything: the worker of rank r
(accelerate's RANK) generates for the questions dealt to r. Its engine sits on its own GPUs: the local rank's slice of the ids it is
given, as many as one engine takes (generate.tensor_parallel_size for vLLM, else one), made the only ones
it sees before torch or vLLM look. With no GPU ids the worker generates on the CPU with its share of the
cores (the launcher would otherwise leave each worker one thread)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    run, k, job_name = Path(argv[0]), int(argv[1]), argv[2]
    gpus = [g for g in (argv[3] if len(argv) > 3 else "").split(",") if g]
    rank, workers = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank, local_workers = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    from omegaconf import OmegaConf

    from rationale_loop.run.records import read_json
    from rationale_loop.run.rundir import round_dir

    cfg = OmegaConf.load(round_dir(run, k) / "config.yaml")
    # Where the run is now (it may have moved since the config was written); never fork again.
    cfg.output_root, cfg.run, cfg.init_from = str(run.parent), run.name, None
    # The backend the deal was cut for (auto resolved by the Hydra process), read before anything asks CUDA.
    dealt = read_json(round_dir(run, k) / f"{job_name}_workers.json")
    cfg.generate.backend = dealt["backend"]
    if gpus:
        take = dealt["gpus_per_worker"]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[local_rank * take : (local_rank + 1) * take])
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_workers))

    from rationale_loop.phases.context import RunContext
    from rationale_loop.phases.workers import JOBS, worker_share

    ctx = RunContext(cfg)
    worker_share(ctx, k, JOBS[job_name](ctx, k), rank, workers)


if __name__ == "__main__":
    main(sys.argv[1:])
