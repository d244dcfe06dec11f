"""Named registries: the one way procedures, training methods, noise families, plotters and CLI commands register.

A registry maps a name to an object (usually a class or a function). Objects register with the
`register` decorator where they are defined; the package that owns the registry imports its modules
so that listing it is complete. Lookups of an unknown name raise a one-line `ValueError` naming the
known ones. It lives in the base layer because every layer above uses it; it imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by `@registry.register(name)`; `get` refuses unknown names in one line."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what the entries are, for messages: "procedure", "training method", ...
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (a second object under one name is refused)."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Register `obj` under `name`; re-registering the same object (a module reload) is harmless."""
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        old = self._entries.get(name)
        if old is not None and old is not obj and getattr(old, "__qualname__", None) != getattr(obj, "__qualname__", 0):
            raise ValueError(f"{self.kind} {name!r} is registered twice ({old!r} and {obj!r})")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """The object registered as `name`, or a one-line ValueError listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r} (known: {', '.join(sorted(self._entries))})") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs sorted by name."""
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)
