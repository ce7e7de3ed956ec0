"""Wall time, where it goes, and peak memory of one whole round (generate and verify, mine, train,
evaluate) as the question pool grows.

Each pool size runs round 1 in its own process, forked from the same SFT round (round_00 of --from-run,
copied into a scratch run), and the process's peak resident set size is read from the kernel
(os.wait4's ru_maxrss). Usage (after `make sft` or `make loop`):

    .venv/bin/python bench/round_memory.py [--from-run outputs/runs/default] [--pools 1024 10240]

Writes bench/results/round_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("generate", "mine", "train_phase", "evaluate")  # where a round's time goes (metrics.json)


def peak_rss_of_round(source_run: Path, pool: int, scratch: Path) -> dict:
    run = scratch / f"pool_{pool}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copytree(source_run / "round_00", run / "round_00")
    command = [
        sys.executable, "-m", "rationale_loop", "round", f"output_root={scratch}", f"run={run.name}",
        f"task.pool_size={pool}", "rounds=1", "force=true",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"round with pool {pool} failed: {' '.join(command)}")
    metrics = json.loads((run / "round_01" / "metrics.json").read_text())
    return {"pool": pool, "samples": metrics["samples"], "pairs": metrics["pairs"], "seconds": seconds,
            "peak_rss_mib": usage.ru_maxrss / 1024,
            **{phase: metrics.get(f"{phase}_seconds") for phase in PHASES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-run", default=str(ROOT / "outputs/runs/default"))
    parser.add_argument("--pools", type=int, nargs="+", default=[1024, 10240])
    parser.add_argument("--scratch", default=str(ROOT / "outputs/bench/round_memory"))
    parser.add_argument("--out", default=str(ROOT / "bench/results/round_memory.json"))
    args = parser.parse_args()
    source = Path(args.from_run)
    if not (source / "round_00" / "DONE").exists():
        raise SystemExit(f"{source}/round_00 is not a finished SFT round: run `make sft` first")
    rows = [peak_rss_of_round(source, pool, Path(args.scratch)) for pool in args.pools]
    base = rows[0]["peak_rss_mib"]
    for row in rows:
        row["peak_vs_first"] = row["peak_rss_mib"] / base
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"{'pool':>8}{'samples':>10}{'pairs':>8}{'seconds':>10}{'peak MiB':>10}{'vs first':>10}"
          + "".join(f"{phase + ' s':>15}" for phase in PHASES))
    for row in rows:
        print(f"{row['pool']:>8}{row['samples']:>10}{row['pairs']:>8}{row['seconds']:>10.1f}{row['peak_rss_mib']:>10.0f}{row['peak_vs_first']:>10.2f}"
              + "".join(f"{row[phase] or 0:>15.1f}" for phase in PHASES))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
