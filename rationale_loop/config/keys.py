"""The keys a config may hold, and the one wording of a wrong one: every dotted key of the schema, the
config groups of conf/, a command-line override checked before Hydra answers it, keys added with `+` that
the schema lacks, and a guess for a misspelt name."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig

from rationale_loop.config.errors import ConfigError
from rationale_loop.config.saved import under
from rationale_loop.config.schema import Config


def schema_keys(schema: type = None, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the schema -> whether keys below it are free (a Dict field: data.sources,
    task.files, columns...). What a command-line override may name."""
    keys: dict[str, bool] = {}
    for name, hint in typing.get_type_hints(schema or Config).items():
        while typing.get_origin(hint) is typing.Union:  # Optional[X]
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if dataclasses.is_dataclass(hint):
            keys[prefix + name] = False
            keys.update(schema_keys(hint, f"{prefix}{name}."))
        else:
            keys[prefix + name] = typing.get_origin(hint) in (dict, Dict) or hint is Any
    return keys


# conf/, absolute: under `python -m`, Hydra would read a relative path as a Python module name.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def config_groups() -> dict[str, list[str]]:
    """Each config group of conf/ and its options (the YAML files in it)."""
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in Path(CONFIG_DIR).iterdir() if d.is_dir()}


# Hydra's own keys that would move the run or write beside it: the tool decides where a run's files go.
FORBIDDEN_HYDRA_KEYS = ("hydra.run", "hydra.job.chdir", "hydra.output_subdir", "hydra.sweep.subdir", "hydra.runtime")


def did_you_mean(name: str, known: Any, shown: str = "{}") -> str:
    """" (did you mean X?)" for the closest of `known`, or "" when none is close."""
    import difflib

    guess = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {shown.format(guess[0])}?)" if guess else ""


def unknown_choice(key: str, value: Any, known: Any, also: str = "") -> str:
    """The one wording of a value outside its closed set (a group option, a registry's name, a schema
    value): `key=value is unknown (did you mean key=x?); known: a, b, c`; `also` names what else is
    accepted beside the list (task.source: a dataset id)."""
    options = sorted(map(str, known))
    listed = ", ".join(options) + (f", {also}" if also else "")
    return f"{key}={value} is unknown{did_you_mean(str(value), options, f'{key}={{}}')}; known: {listed}"


def check_override_keys(overrides: list[str], groups: dict[str, list[str]]) -> None:
    """One line, with a guess, for an override that names no key of the schema or no option of a
    group, before Hydra answers it with a screen of advice (such as adding the key with '+', which
    validate() then refuses)."""
    keys = schema_keys()
    for override in overrides:
        if override.startswith("-") or ("=" not in override and not override.startswith("~")):  # `~key` drops the key
            continue
        text = override.lstrip("+~")
        key, _, value = text.partition("=")
        key = key.strip()
        if key.startswith("hydra.") or key.startswith("hydra/"):
            if under(key, FORBIDDEN_HYDRA_KEYS):
                raise ConfigError(f"{key} cannot be set: a run's files go to <output_root>/<run> (set output_root= or run= instead)")
            continue
        if key in groups:
            options = groups[key]
            for choice in (part.strip() for part in value.split(",")):
                if choice and choice not in options and not choice.startswith("$"):
                    raise ConfigError(unknown_choice(key, choice, options))
            continue
        parts = key.split(".")
        if any(keys.get(".".join(parts[:i])) for i in range(1, len(parts))):
            continue  # below a free-form dict
        if key not in keys:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, keys)}; "
                              "`.venv/bin/python -m rationale_loop loop --cfg job` lists every key")


def unknown_keys(cfg: DictConfig, schema: type = None, prefix: str = "") -> list[str]:
    """Keys of `cfg` that the schema does not have: Hydra lets `+key=value` add one even to a
    structured config, and a misspelt key added that way would otherwise be ignored in silence."""
    schema = schema or Config
    hints = typing.get_type_hints(schema)
    unknown = []
    for key in cfg:
        if key == "hydra" and not prefix:
            continue
        if key not in hints:
            unknown.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(hints[key]) and isinstance(cfg[key], DictConfig):
            unknown += unknown_keys(cfg[key], hints[key], f"{prefix}{key}.")
    return unknown
