"""Registries: each model, task and visual encoder is named once, and everything else asks here.

    MODELS = Registry("model")                 # pipeline.models
    @MODELS.register("cbt")
    class CBTEntry: ...

    MODELS.get("cbt")        # the entry; an unknown name raises ConfigError listing the choices
    MODELS.names()           # sorted names, e.g. for a config Literal or a CLI choice list

Config validation, the demo, the zero-shot scorer and the parametrized tests iterate over a
registry instead of typing the names out again, so adding a thing is one entry in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pipeline.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry for one kind of thing ("model", "task", "visual encoder")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Add `entry` under `name`; usable as a decorator. A second entry of a name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry named `name`; ConfigError naming the valid choices otherwise."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
