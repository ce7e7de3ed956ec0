"""A run remembers how it was launched.

Every round saves the command-line overrides it ran with (round_KK/overrides.yaml, beside its resolved
config.yaml). A later command on the run (`make round`, `make loop`, inspect, report) starts from the
overrides of the run's latest round and lays the new ones over them, key by key: nothing is retyped,
and a new value is a deliberate change that the rounds after it keep. A fork's first call starts from
the overrides of the round it forks (its init_from), so a sweep job is its source's recipe plus the
sweep's values.

Overrides, not the resolved config, are what is remembered: a group choice (objective=star) sets many
keys at once and only composing it again gives the same config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml

from rationale_loop.config.errors import ConfigError, DataError
from rationale_loop.config.keys import check_override_keys, config_groups
from rationale_loop.config.saved import under
from rationale_loop.run.records import atomic_writer, open_regular

OVERRIDES = "overrides.yaml"
DATA_SETTINGS = "data.yaml"  # what `make data` prepared round 0's mix with (round_start.py's DATA_KEYS)
# Round 0's SFT data mix (data/sources.py writes it, `make data` ahead of SFT)
MIX_ROWS = "sft_mix.jsonl"
MIX_MANIFEST = "data_manifest.json"
PREFERENCE_ROWS = "preference_pairs.jsonl"
DECONTAMINATION = "decontamination.jsonl"  # each row dropped as a held-out text: source, id, reason, score, both texts

# Keys that say what to do now or where the run lives, not how its rounds are made: never remembered.
NOT_REMEMBERED = ("run", "output_root", "force", "init_from", "inspect", "report", "hydra")

# Files a round holds before any of its phases has finished: its config, and the SFT data mix that
# `make data` prepares (checked against DATA_SETTINGS before it is reused). Anything else is work.
NO_WORK = {"config.yaml", OVERRIDES, DATA_SETTINGS, MIX_MANIFEST, MIX_ROWS, PREFERENCE_ROWS, DECONTAMINATION}


def override_key(override: str) -> tuple[str, str]:
    """("+", "data.sources.mine") for "+data.sources.mine={path:x}": Hydra's prefix and the key."""
    text = str(override)
    prefix = text[: len(text) - len(text.lstrip("+~"))]
    return prefix, text[len(prefix):].split("=", 1)[0].strip()


def is_remembered(override: str) -> bool:
    _, key = override_key(override)
    return not under(key.replace("/", "."), NOT_REMEMBERED)  # hydra/job_logging=... is Hydra's too


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """The saved overrides with each key the new ones name replaced (in the saved order), then the new
    ones for other keys. A key first added with "+" keeps its "+" when it is given again without one:
    the user is changing a value, not adding the key a second time. A new `~key` drops the saved
    override of the key (the default applies again); one with no saved override to drop is kept, for
    Hydra to delete what a preset put there (an entry of data.sources)."""
    merged: dict[str, str] = {override_key(o)[1]: o for o in saved if is_remembered(o)}
    for override in new:
        prefix, key = override_key(override)
        earlier = merged.get(key)
        if prefix == "~" and earlier is not None:
            del merged[key]
            continue
        if earlier is not None and not prefix and override_key(earlier)[0] == "+":
            override = "+" + override
        merged[key] = override
    return list(merged.values())


def split_drops(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the overrides but the `~key`s, the `~key`s): Hydra composes a call's own overrides before the run's
    remembered ones are read, and a `~key` that drops one of them would fail there (a key of the schema
    cannot be deleted); merge_overrides applies them. Hydra's own (`~hydra/...`) stay Hydra's."""
    drops = [o for o in overrides if override_key(o)[0] == "~" and is_remembered(o)]
    return [o for o in overrides if o not in drops], drops


def holds_work(round_path: Path) -> bool:
    """True when some phase of the round has written its output (a checkpoint, samples, a training
    state...): such a round is resumed, and only with the config it started with."""
    return any(entry.name not in NO_WORK and not entry.name.startswith(".") for entry in round_path.iterdir())


def read_overrides(round_path: Path) -> list[str] | None:
    """The overrides a round ran with, or None for a round made before rounds saved them. A file that
    holds what no round writes (edited by hand, or damaged) is one DataError naming it: nothing of it is
    applied, not even in part."""
    path = round_path / OVERRIDES
    if not os.path.lexists(path):
        return None
    value = yaml.safe_load(_read_text(path, follow=False))
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(f"{path}: expected a list of overrides (strings); restore it or delete it")
    for override in value:
        if not is_remembered(override):  # write_overrides never saves it: dropping it quietly would hide the edit
            raise DataError(f"{path}: {override!r} is never saved by a round ({', '.join(NOT_REMEMBERED)} are each call's own, "
                            "given on its command line); restore it or delete it")
    try:
        check_override_keys(value, config_groups())
    except ConfigError as error:  # a key the schema does not have, or a group option conf/ does not hold
        raise DataError(f"{path}: {error}; restore it or delete it") from None
    return value


def read_saved_config(path: Path) -> dict:
    """A round's config.yaml (or data.yaml) as a plain dict, unresolved: a damaged or odd file is one
    line naming it, and an `${oc.env:...}` in it is never looked up."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(_read_text(path)), resolve=False)  # type: ignore[return-value]


def _read_text(path: Path, follow: bool = True) -> str:
    """A run's YAML file as text, checked to parse: an odd file (a FIFO, a directory; a link with
    follow=False), bytes that are not UTF-8 or YAML that does not parse is one DataError naming it."""
    try:
        with open_regular(path, follow=follow) as handle:
            text = handle.read().decode("utf-8")
        yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not readable YAML ({str(error).splitlines()[0]}); restore it, or delete the round") from None
    return text


def write_overrides(round_path: Path, overrides: list[str]) -> None:
    with atomic_writer(round_path / OVERRIDES) as handle:
        handle.write("# the command-line overrides this round ran with; later commands on the run start from them\n")
        handle.write(yaml.safe_dump([o for o in overrides if is_remembered(o)], default_flow_style=False, allow_unicode=True))


def remembered_overrides(run: Path, init_from: str | None) -> tuple[list[str], Path | None]:
    """What a command on `run` starts from: the overrides of the run's latest round that holds
    something (a finished round, or an interrupted one with a finished phase), or, on a fork's first
    call, those of the round it forks; and that round, for messages. Empty (and None) for a new run."""
    from rationale_loop.run.rundir import FORK, next_round, parse_round_path, round_dir

    if init_from and not os.path.lexists(run / FORK):
        source, k = parse_round_path(init_from)
        saved = read_overrides(round_dir(source, k)) if round_dir(source, k).is_dir() else None
        return (saved, round_dir(source, k)) if saved is not None else ([], None)
    if not run.is_dir():
        return [], None
    k = next_round(run)
    candidates = [round_dir(run, k)] if round_dir(run, k).is_dir() and holds_work(round_dir(run, k)) else []
    candidates += [round_dir(run, j) for j in range(k - 1, -1, -1)]
    for path in candidates:
        saved = read_overrides(path)
        if saved is not None:
            return saved, path
    return [], None


def with_run_named(overrides: list[str], run: str) -> list[str]:
    """The overrides with `run` as resolved (a sweep job's name interpolates Hydra's job settings, which
    composing the overrides again would not see)."""
    return [o for o in overrides if override_key(o)[1] != "run"] + [f"run='{run}'"]
