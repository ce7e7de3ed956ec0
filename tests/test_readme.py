"""README.md cannot drift from the tool: every command line in its code blocks is parsed here as the
shell and the tool would parse it. A `make` line names a target the Makefile has, and its ARGS compose
into a config that validate() accepts; a `python -m rationale_loop` line names a command and overrides
that compose; a benchmark line names a script that exists with the options it is given. Then the README is
followed as a new user follows it: its lines run in order, on small settings (a slow test), but those that
need what a user brings (a GPU, vLLM, a network, a real model or data files: NOT_RUN, with the reason)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from rationale_loop.cli import COMMANDS, PLAIN_COMMANDS, config_groups
from rationale_loop.config.errors import ConfigError
from rationale_loop.config.keys import check_override_keys
from rationale_loop.preflight.config_checks import validate
from test_config import compose_config

HYDRA_TARGETS = {"loop", "data", "sft", "round", "inspect", "report", "sweep"}


def readme_commands() -> list[str]:
    """The command lines of README.md's fenced code blocks, continuation lines joined."""
    lines, inside, current = [], False, ""
    for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if re.match(r"\s*(make|python|\.venv[\w-]*/bin/python)\b", current):
            lines.append(current.strip())
        current = ""
    return lines


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), flags=re.M))


def check_overrides(overrides: list[str], sweep: bool = False) -> None:
    check_override_keys(overrides, config_groups())
    if sweep:  # each job's values: the first of each comma-separated choice
        overrides = [o.split("=", 1)[0] + "=" + o.split("=", 1)[1].split(",")[0] if "=" in o else o for o in overrides]
    overrides = [o for o in overrides if not o.startswith("-")]
    cfg = compose_config(*overrides)
    try:
        validate(cfg, overrides)
    except ConfigError as error:
        # What the config asks of the machine (a GPU for peft=qlora) is not the README's to promise here.
        if not re.search(r"CUDA|GPU|bitsandbytes", str(error)):
            raise


COMMANDS_IN_README = readme_commands()


def test_the_readme_has_command_lines_to_check():
    assert any(line.startswith("make loop") for line in COMMANDS_IN_README)
    assert any(line.startswith("make sweep") for line in COMMANDS_IN_README)


@pytest.mark.parametrize("line", COMMANDS_IN_README)
def test_every_readme_command_line_parses(line):
    words = shlex.split(line, comments=True)
    if words[0] == "make":
        assignments = dict(word.split("=", 1) for word in words[1:] if "=" in word and re.match(r"^[A-Z_]+=", word))
        targets = [word for word in words[1:] if not re.match(r"^[A-Z_]+=", word)]
        assert targets and set(targets) <= makefile_targets(), f"{line}: no such make target"
        if targets[0] in HYDRA_TARGETS:
            overrides = shlex.split(assignments.get("ARGS", ""))
            if assignments.get("ROUND") and targets[0] == "inspect":
                overrides.append(f"inspect.round={assignments['ROUND']}")
            check_overrides(overrides, sweep=targets[0] == "sweep")
        return
    if words[0].endswith("python") and words[1:3] == ["-m", "rationale_loop"]:
        command = words[3]
        assert command in COMMANDS or command in PLAIN_COMMANDS, f"{line}: no such command"
        if command in COMMANDS:
            check_overrides([w for w in words[4:] if "=" in w and not w.startswith("-")])
        return
    script = REPO_ROOT / words[1]
    assert script.is_file(), f"{line}: {words[1]} does not exist"
    for option in (w for w in words[2:] if w.startswith("--")):
        assert f'"{option}"' in script.read_text(), f"{line}: {words[1]} has no option {option}"


# README lines not run here, each with what it needs that this machine does not have (a line is matched by
# the text it holds; a new README line must be run or named here).
NOT_RUN = {
    "make test": "the test suite: it is what runs this test",
    "RUN=smol": "the public SVAMP file (task.data_dir) and a real model's 23 minutes on a CPU",
    "RUN=my-model": "a 3B model the user has (model.path)",
    "RUN=gsm8k": "a 3B model the user has (model.path) and GSM8K's files",
    "make setup-vllm": "a network (it installs vLLM)",
    "RUN=memphis-8gpu": "8 GPUs, vLLM and the recipe's data from the hub",
    "RUN=memphis-qlora": "a CUDA GPU (QLoRA), vLLM and the recipe's data from the hub",
}
# What makes the README's runs small: the end-to-end test's model, task and SFT, a model right often enough
# for round 2 to mine the 21 pairs that the README's `inspect.page=3` of 10 needs (29 of a 48-question pool
# on a 2-core AMD CPU), kept so by rounds that barely move it (one epoch at rank.lr 1e-5: the test is of the
# commands, not of what the rounds teach); and verify.chain=count, so that the README's `inspect.wrong_chain`
# line, which is for runs that check steps, has step checks to show.
START_RUN = ("loop", "sft", "round", "data")


def small_settings(models: Path) -> list[str]:
    from test_end_to_end import SMALL

    return [*SMALL, "task.pool_size=48", "rank.epochs=1", "rank.lr=1e-5", "verify.chain=count", f"model.cache_dir={models}"]


def not_run(line: str) -> str | None:
    return next((why for text, why in NOT_RUN.items() if text in line), None)


def test_every_line_not_run_is_still_in_the_readme():
    assert all(any(text in line for line in COMMANDS_IN_README) for text in NOT_RUN), "NOT_RUN names a line the README lost"


def _as_run_here(line: str, root: Path, started: set[str]) -> list[str]:
    """The README's line as this test runs it: make with this interpreter's environment (no reinstall),
    every run under `root`, and the small settings given to the first command of each run (the run
    remembers them, and a fork or a sweep job its source round's)."""
    words = shlex.split(line, comments=True)
    if words[0] != "make":
        return [sys.executable, *words[1:]]  # .venv/bin/python: this interpreter is the one make setup made
    assignments = {word.split("=", 1)[0]: word.split("=", 1)[1] for word in words[1:] if re.match(r"^[A-Z_]+=", word)}
    targets = [word for word in words[1:] if not re.match(r"^[A-Z_]+=", word)]
    args = assignments.get("ARGS", "").replace("outputs/runs/", f"{root}/")
    run = assignments.get("RUN", "default")
    if targets[0] in START_RUN and run not in started and "init_from=" not in args:
        args = " ".join([*small_settings(root.parent / "models"), args])
    started.add(run)
    assignments.update(ARGS=args, OUTPUT_ROOT=str(root))
    return ["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}", *targets,
            *(f"{key}={value}" for key, value in assignments.items())]


@pytest.mark.slow
def test_the_readme_s_lines_run_in_order(tmp_path):
    """Minutes on 2 CPU cores (two runs trained from scratch, a fork, a sweep of four jobs): marked slow."""
    root, started = tmp_path / "runs", set()
    for line in COMMANDS_IN_README:
        if not_run(line):
            continue
        done = subprocess.run(_as_run_here(line, root, started), cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                              timeout=3600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    # What the lines made: the README's runs, the fork and the sweep's four jobs, each a finished run.
    jobs = sorted(path.parent.name for path in (root / "w1-r1").glob("*/rounds.jsonl"))
    assert jobs == sorted(f"objective:{o}+rank.lr:{lr}" for o in ("memphis", "star") for lr in ("1e-07", "5e-07")), jobs
    for run in ("default", "w1", "lowlr"):
        assert (root / run / "rounds.jsonl").is_file(), run
