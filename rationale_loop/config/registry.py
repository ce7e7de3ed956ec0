"""Name -> object tables (prompt formats, loaders, objectives, verifiers...) that answer an unknown name
the same way everywhere: one line naming the config key, with a guess and the known names.

A registry knows the key its names are set under (`objective.name`), so the module that owns the table
validates its own names; config_checks.py only asks it. It sits above errors.py and keys.py (ConfigError and the
wording) and below every module that holds a table.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, Iterator, Mapping, TypeVar

from rationale_loop.config.errors import ConfigError
from rationale_loop.config.keys import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects, filled by `register` (a decorator, or a call with the object); `get` raises a
    ConfigError naming `key` for a name it does not hold."""

    def __init__(self, key: str, entries: Mapping[str, T] | None = None, also: str = ""):
        self.key = key  # the config key a name is given under, for the message: objective.name
        self.also = also  # what the key accepts beside the names, for the message (task.source: a dataset id)
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Callable[[T], T] | T:
        """`@REG.register("name")` over a class or function, or `REG.register("name", obj)`. A name taken
        twice is refused unless `replace`: two modules silently fighting over a name is a bug."""

        def add(obj: T) -> T:
            if name in self._entries and not replace:
                raise ValueError(f"{self.key}={name} is already registered")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Drop `name` if registered (a test's or a plugin's own entry, removed when it is done)."""
        self._entries.pop(name, None)

    def get(self, name: str, key: str | None = None) -> T:
        """The object under `name`; an unknown name raises ConfigError naming `key` (default: the
        registry's own; one table can back two keys, as verifiers back task.verifier and verify.kind)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value from a config (a list)
            raise ConfigError(unknown_choice(key or self.key, name, self._entries, self.also)) from None

    def check(self, name: str, key: str | None = None) -> None:
        """Raise as `get` does for an unknown name; for a config check that needs no object."""
        self.get(name, key)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterable[tuple[str, T]]:
        return self._entries.items()

    def values(self) -> Iterable[T]:
        return self._entries.values()

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, {self.names()})"
