"""A config as a round saves it (config.yaml), flattened to dotted keys, and two saved configs compared
on the keys that say how a run's rounds are made."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def saved_form(cfg: DictConfig) -> dict[str, Any]:
    """The config as a round saves it (config.yaml): resolved, except that a value read from the
    environment (`${oc.env:...}`) stays as its text, so no environment value (a token, a private
    path) is written into a run that may be shared or exported."""
    raw, resolved = OmegaConf.to_container(cfg, resolve=False), to_container(cfg)

    def keep_env(raw_value: Any, value: Any) -> Any:
        if isinstance(raw_value, dict) and isinstance(value, dict):
            return {key: keep_env(raw_value.get(key), item) for key, item in value.items()}
        if isinstance(raw_value, list) and isinstance(value, list) and len(raw_value) == len(value):
            return [keep_env(a, b) for a, b in zip(raw_value, value)]
        return raw_value if isinstance(raw_value, str) and "${oc.env:" in raw_value else value

    return keep_env(raw, resolved)


# Keys (and key prefixes) that say what to do now or where files go, not how the run's rounds are made:
# they may change between calls (a run directory may be moved or renamed).
NON_RUN_KEYS = ("rounds", "inspect", "report", "force", "init_from", "run", "output_root", "model.cache_dir", "launch")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def under(key: str, prefixes: Any) -> bool:
    """Whether dotted `key` is one of `prefixes` or below one (rank.lr is under rank)."""
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring NON_RUN_KEYS."""
    old, new = flatten(previous), flatten(current)
    keys = sorted(set(old) | set(new))
    return [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in keys
        if not under(key, NON_RUN_KEYS) and old.get(key, "<absent>") != new.get(key, "<absent>")
    ]
