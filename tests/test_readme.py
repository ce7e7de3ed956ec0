"""README.md cannot drift from the tool: every command line in its code blocks is parsed here as the
shell and the tool would parse it. A `make` line names a target the Makefile has, and its ARGS compose
into a config that validate() accepts; a `python -m rationale_loop` line names a command and overrides
that compose; a benchmark line names a script that exists with the options it is given. Nothing is run:
the README's examples name models and data a user has, not this machine."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO_ROOT
from rationale_loop.cli import COMMANDS, PLAIN_COMMANDS, config_groups
from rationale_loop.config import ConfigError, check_override_keys
from rationale_loop.config_checks import validate
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
