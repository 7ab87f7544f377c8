"""Name -> object registries: every variant a protocol can sweep over is named by a string.

A ``Registry`` is a dict with two promises: a name is registered once, and an unknown name
raises a ``ValueError`` that names the argument, the bad value and every allowed value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


class Registry(Generic[T]):
    """Variants of one concept keyed by name; ``arg`` is the argument users set it with."""

    def __init__(self, arg: str) -> None:
        self.arg = arg
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.arg} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``: ``@AGGREGATIONS.register("token-mean")``."""

        def add(item: T) -> T:
            return self.add(name, item)

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.arg} {name!r}; choose one of {self.names()}") from None

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise the same error as ``get``."""
        self.get(name)
        return name

    def name_type(self) -> Any:
        """A pydantic field type for a name of this registry: ``str`` checked by ``check``, so a
        config model rejects an unknown name with the allowed ones in the message."""
        return Annotated[str, AfterValidator(self.check)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
