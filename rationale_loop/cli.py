"""Hydra entry points, one per Makefile target: `python -m rationale_loop <command> [overrides]`.

    sft      round 0 only (supervised finetuning)
    round    the next unfinished round of the run (round 0 is SFT), saying which and why
    loop     every remaining round up to `rounds`, then the accuracy table
    inspect  one round's stats and pairs (inspect.round=k)
    report   write the run's report.html: rounds table, plots, a sample of each round's pairs
    compare  runs side by side (plain paths, not Hydra overrides): compare RUN_DIR... | compare --forks-of RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

from rationale_loop.config import register_configs

# An absolute path: under `python -m`, Hydra would read a relative one as a Python module name.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

COMMANDS: dict[str, Callable[[DictConfig], None]] = {}


def command(name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[DictConfig], None]]:
    def add(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
        COMMANDS[name] = fn
        return fn

    return add


@command("sft")
def sft(cfg: DictConfig) -> None:
    from rationale_loop.loop import Run, is_done, run_dir
    from rationale_loop.report import print_rounds

    if is_done(run_dir(cfg), 0):
        print(f"[rationale_loop] {run_dir(cfg)}/round_00 is already done; SFT is not run again")
    else:
        Run(cfg).run_round(0)
    print_rounds(run_dir(cfg))


@command("round")
def round_(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_dir, run_next_round
    from rationale_loop.report import print_rounds

    run_next_round(cfg)
    print_rounds(run_dir(cfg))


@command("loop")
def loop(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_dir, run_loop
    from rationale_loop.report import print_rounds

    run_loop(cfg)
    print_rounds(run_dir(cfg))


@command("inspect")
def inspect(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_dir
    from rationale_loop.report import InspectFilter, inspect_round

    view = InspectFilter(cfg.inspect.question, cfg.inspect.invalid, cfg.inspect.unsolved, cfg.inspect.page, cfg.inspect.pairs)
    inspect_round(run_dir(cfg), cfg.inspect.round, view)


@command("report")
def report(cfg: DictConfig) -> None:
    from rationale_loop.html_report import write_report
    from rationale_loop.loop import run_dir

    print(f"[rationale_loop] wrote {write_report(run_dir(cfg), pairs_per_round=cfg.report.pairs)}")


def compare(argv: list[str]) -> None:
    """Not a Hydra command: it reads finished runs and takes their directories."""
    import argparse

    from rationale_loop.report import compare_runs, forks_of

    parser = argparse.ArgumentParser(prog="python -m rationale_loop compare", description="runs side by side")
    parser.add_argument("runs", nargs="*", type=Path, help="run directories")
    parser.add_argument("--forks-of", type=Path, help="this run and every run forked from it (under --root)")
    parser.add_argument("--root", type=Path, default=Path("outputs/runs"), help="where forks are looked for")
    arguments = parser.parse_args(argv)
    runs = list(arguments.runs)
    if arguments.forks_of is not None:
        runs += [arguments.forks_of, *forks_of(arguments.forks_of, arguments.root)]
    missing = [str(run) for run in runs if not run.is_dir()]
    if not runs or missing:
        parser.error(f"no such run directory: {', '.join(missing)}" if missing else "name at least one run")
    compare_runs(runs)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] == "compare":
        compare(argv[2:])
        return
    if len(argv) < 2 or argv[1] not in COMMANDS:
        names = ", ".join([*COMMANDS, "compare"])
        raise SystemExit(f"usage: python -m rationale_loop <{names}> [hydra overrides]\n{__doc__}")
    name = argv.pop(1)
    sys.argv = argv
    register_configs()
    entry = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(COMMANDS[name])
    entry()
