"""Hydra entry points, one per Makefile target: `python -m rationale_loop <command> [overrides]`.

    data     prepare the run's SFT data once (data=) and preview it: counts per source and format, a row per format
    sft      round 0 only (supervised finetuning)
    round    the next unfinished round of the run (round 0 is SFT), saying which and why
    loop     every remaining round up to `rounds`, then the accuracy table
    join     a machine other than the first of a multi-machine run: its part of each launch (docs/scaling.md)
    inspect  one round's stats and pairs (inspect.round=k)
    report   write the run's report.html: rounds table, plots, a sample of each round's pairs
    compare  runs side by side (not Hydra overrides): compare NAME_OR_DIR... [--root DIR] | compare --forks-of NAME_OR_DIR
    clean    delete a run directory (a plain path under outputs/runs): clean NAME [--root DIR]
    export   a finished round as a publishable folder with a model card: export RUN_DIR [--round K] [--out DIR]

The tool's own errors (a bad config value, a broken data file, a run in use) print one line and exit 1;
RATIONALE_LOOP_DEBUG=1 (or Hydra's HYDRA_FULL_ERROR=1) shows their traceback too.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

from rationale_loop.config.errors import ConfigError, UserError
from rationale_loop.config.keys import CONFIG_DIR, check_override_keys, config_groups
from rationale_loop.config.schema import register_configs

COMMANDS: dict[str, Callable[[DictConfig], None]] = {}


def _debugging() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in ("RATIONALE_LOOP_DEBUG", "HYDRA_FULL_ERROR"))


def reporting_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """A UserError becomes one line on stderr and exit status 1. SystemExit, unlike an exception,
    passes through Hydra's own error handling untouched."""

    @functools.wraps(fn)
    def run(*args: object) -> None:
        try:
            fn(*args)
        except UserError as error:
            if _debugging():
                raise
            raise SystemExit(f"rationale_loop: error: {error}") from None
        except KeyboardInterrupt:
            if _debugging():
                raise
            print(f"\nrationale_loop: interrupted. {_what_was_kept(args)}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return run


def _what_was_kept(args: tuple[object, ...]) -> str:
    """Ctrl-C's one line: every phase writes its output whole, so what finished is kept and the same
    command goes on from there."""
    cfg = args[0] if args and isinstance(args[0], DictConfig) else None
    if cfg is None or "run" not in cfg:
        return "Nothing half-written is kept."
    return (f"Finished rounds and phases of {Path(cfg.output_root) / cfg.run} are kept; "
            f"`make round RUN={cfg.run}` (or `make loop RUN={cfg.run}`) goes on from where it stopped.")


# This call's `~key`s (run_config.split_drops): held back from Hydra's own composition of the command line,
# which knows nothing of the run's remembered overrides they drop, and applied by with_run_config.
DROPS: list[str] = []


def with_run_config(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """The config this call runs with: the run's remembered overrides (run_config.py) with this call's
    laid over them, composed again (sweep.compose_remembered); and that list of overrides, which the
    rounds it opens save."""
    from hydra.core.hydra_config import HydraConfig

    from rationale_loop.sweep import compose_remembered

    composed, merged, notes = compose_remembered(cfg, [*HydraConfig.get().overrides.task, *DROPS], cfg.run)
    for note in notes:
        print(f"[rationale_loop] {note}", flush=True)
    return composed, merged


def command(name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[DictConfig], None]]:
    def add(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
        COMMANDS[name] = reporting_errors(fn)
        return fn

    return add


@command("data")
def data(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_data

    print(run_data(*with_run_config(cfg)))


@command("sft")
def sft(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_sft
    from rationale_loop.run.rundir import run_dir
    from rationale_loop.views.report import print_rounds

    cfg, overrides = with_run_config(cfg)
    run_sft(cfg, overrides)
    print_rounds(run_dir(cfg), wide=cfg.inspect.wide)


@command("round")
def round_(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_next_round
    from rationale_loop.run.rundir import run_dir
    from rationale_loop.views.report import print_rounds

    cfg, overrides = with_run_config(cfg)
    run_next_round(cfg, overrides)
    print_rounds(run_dir(cfg), wide=cfg.inspect.wide)


@command("loop")
def loop(cfg: DictConfig) -> None:
    from rationale_loop.loop import run_loop
    from rationale_loop.run.rundir import run_dir
    from rationale_loop.views.report import print_rounds

    cfg, overrides = with_run_config(cfg)
    run_loop(cfg, overrides)
    print_rounds(run_dir(cfg), wide=cfg.inspect.wide)


@command("join")
def join(cfg: DictConfig) -> None:
    from rationale_loop.join import join as serve_launches

    serve_launches(cfg)


def _readable_run(cfg: DictConfig) -> Path:
    """The run a read-only command reads: its directory, which must be one (nothing is created here)."""
    from rationale_loop.run.rundir import run_dir

    path = run_dir(cfg)
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"{path} is a regular file, not a run directory; name another run (run=NAME)")
    return path


@command("inspect")
def inspect(cfg: DictConfig) -> None:
    from rationale_loop.views.report import InspectFilter, inspect_round

    inspect_round(_readable_run(cfg), cfg.inspect.round, InspectFilter.from_config(cfg.inspect))


@command("report")
def report(cfg: DictConfig) -> None:
    from rationale_loop.views.html_report import write_report

    print(f"[rationale_loop] wrote {write_report(_readable_run(cfg), pairs_per_round=cfg.report.pairs)}")


@reporting_errors
def compare(argv: list[str]) -> None:
    """Not a Hydra command: it reads finished runs, named as run= names them (resolved under --root) or
    by their directories."""
    import argparse

    from rationale_loop.views.compare import compare_runs, forks_of, resolve_run

    parser = argparse.ArgumentParser(prog="python -m rationale_loop compare", description="runs side by side")
    parser.add_argument("runs", nargs="*", help="runs: names under --root (as in run=NAME) or run directories")
    parser.add_argument("--forks-of", help="this run (a name or a directory) and every run forked from it (under --root)")
    parser.add_argument("--root", type=Path, default=Path("outputs/runs"), help="where runs are named and forks looked for")
    arguments = parser.parse_args(argv)
    names = [*arguments.runs, *([arguments.forks_of] if arguments.forks_of is not None else [])]
    found = {name: resolve_run(name, arguments.root) for name in names}
    missing = [name for name, run in found.items() if run is None]
    if missing:
        parser.error(f"no such run directory: {', '.join(missing)} (neither a directory nor a run under {arguments.root})")
    runs = [found[name] for name in arguments.runs]
    if arguments.forks_of is not None:
        base = found[arguments.forks_of]
        runs += [base, *forks_of(base, arguments.root)]
    if not runs:
        parser.error("name at least one run")
    compare_runs(runs)


@reporting_errors
def clean(argv: list[str]) -> None:
    """Not a Hydra command either: `make clean-run RUN=name` deletes one run, refusing anything else."""
    import argparse

    from rationale_loop.cleanup import delete_run

    parser = argparse.ArgumentParser(prog="python -m rationale_loop clean", description="delete one run directory")
    parser.add_argument("run", help="the run's name, as given to run= (a path relative to --root)")
    parser.add_argument("--root", default="outputs/runs", help="where runs live (output_root)")
    parser.add_argument("--force", action="store_true", help="delete a run even when other runs are forked from it")
    arguments = parser.parse_args(argv)
    deleted, orphans = delete_run(arguments.root, arguments.run, force=arguments.force)
    print(f"[rationale_loop] deleted {deleted}")
    for fork in orphans:
        print(f"[rationale_loop] {fork} was forked from it: its linked rounds are gone, and it cannot go on", file=sys.stderr)


@reporting_errors
def export(argv: list[str]) -> None:
    """`make export RUN=name [ROUND=k]`: a finished round as a folder to publish, with its model card."""
    import argparse

    from rationale_loop.export import export_round

    parser = argparse.ArgumentParser(prog="python -m rationale_loop export", description="a round's model, tokenizer and model card")
    parser.add_argument("run", help="the run: its name under --root (as run= names it) or its directory")
    parser.add_argument("--root", type=Path, default=Path("outputs/runs"), help="where runs live (output_root)")
    parser.add_argument("--round", type=int, default=None, help="the round to export (default: the last finished)")
    parser.add_argument("--out", type=Path, default=None,
                        help="a new or empty directory (default: outputs/exports/<run>/round_KK)")
    parser.add_argument("--force", action="store_true", help="replace an earlier export in --out (only the files it wrote)")
    parser.add_argument("--license", default="unknown", help="the model card's license (an id such as apache-2.0; default unknown)")
    arguments = parser.parse_args(argv)
    run = arguments.root / arguments.run
    if not run.is_dir():
        run = Path(arguments.run)
    if not run.is_dir():
        parser.error(f"no such run: {arguments.run} (neither {arguments.root / arguments.run} nor a directory)")
    from rationale_loop.export import default_target

    out = arguments.out
    if out is None:
        from rationale_loop.run.rundir import next_round

        out = default_target(run, next_round(run) - 1 if arguments.round is None else arguments.round, arguments.root)
    print(f"[rationale_loop] exported to {export_round(run, arguments.round, out, force=arguments.force, license=arguments.license)}")


PLAIN_COMMANDS = {"compare": compare, "clean": clean, "export": export}


def _check_overrides_or_exit(overrides: list[str]) -> None:
    """A misspelt key or group option, or a Hydra key that would move the run: one line, before Hydra."""
    try:
        check_override_keys(overrides, config_groups())
    except ConfigError as error:
        if _debugging():
            raise
        raise SystemExit(f"rationale_loop: error: {error}") from None


# The commands that run rounds, and so validate their config before any work (loop.open_run): a sweep of
# them is checked whole first. inspect and report only read runs.
RUN_COMMANDS = ("data", "sft", "round", "loop")


def _check_sweep_or_exit(arguments: list[str]) -> None:
    """Every job of a sweep checked before the first starts (sweep.py): one line naming the bad job. The
    command line read by Hydra's own parser; a sweep of another config (--config-name, --config-dir)
    is left to Hydra."""
    from hydra._internal.utils import get_args_parser

    from rationale_loop.sweep import check_sweep

    parsed, _ = get_args_parser().parse_known_args(arguments)
    multirun = parsed.multirun or any(o.replace(" ", "") == "hydra.mode=MULTIRUN" for o in parsed.overrides)
    if not multirun or parsed.config_name or parsed.config_dir or parsed.config_path:
        return
    try:
        check_sweep(parsed.overrides, CONFIG_DIR)
    except UserError as error:
        if _debugging():
            raise
        raise SystemExit(f"rationale_loop: error: {error}") from None


def _no_bars_unless_on_a_terminal() -> None:
    """Piped into a file or a CI log, a progress bar is debris (lines redrawn with \r). The tool's own bars
    are drawn on a terminal only (terminal.progress_bar); this turns off every library's too (datasets'
    "Generating train split", transformers' and the hub's), in this process and the ones it starts (DDP
    workers, vLLM's), unless the user set these variables."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> None:
    _no_bars_unless_on_a_terminal()
    argv = list(sys.argv if argv is None else argv)
    # `make` hands ARGS over in this variable, split here as a shell would split words but never expanded
    # (bash would brace-expand `{path:x,schema:alpaca}` and glob `[1,2]`); popped, so no child sees it.
    argv += shlex.split(os.environ.pop("RATIONALE_LOOP_ARGS", ""))
    if len(argv) >= 2 and argv[1] in PLAIN_COMMANDS:
        PLAIN_COMMANDS[argv[1]](argv[2:])
        return
    if len(argv) < 2 or argv[1] not in COMMANDS:
        names = ", ".join([*COMMANDS, *PLAIN_COMMANDS])
        raise SystemExit(f"usage: python -m rationale_loop <{names}> [hydra overrides]\n{__doc__}")
    name = argv.pop(1)
    _check_overrides_or_exit(argv[1:])
    register_configs()
    if name in RUN_COMMANDS:
        from rationale_loop.run.run_config import split_drops

        _check_sweep_or_exit(argv[1:])
        argv[1:], DROPS[:] = split_drops(argv[1:])
    sys.argv = argv
    entry = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(COMMANDS[name])
    entry()
