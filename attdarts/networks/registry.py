"""A name -> factory table, one per kind of layer (operations, attention modules).

The key is exactly the DSL token, so a genotype's `sep_conv_3x3` and the registry entry are the same
string. Registration order is kept for listings only: candidate order in a search comes from the
search-space declaration, never from here (STYLE.md section 5). This module imports no torch, so
front-end code may ask what is registered without paying for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

# one error for a name registered twice, here and in the catalog
from attdarts.language.catalog import DuplicateNameError

__all__ = ["DuplicateNameError", "Registry", "UnknownNameError"]

FactoryT = TypeVar("FactoryT", bound=Callable[..., object])


class UnknownNameError(KeyError):
    """A registry miss; the message names the closest registered names.

    A `KeyError`, so `name in registry` style code and plain `except KeyError` both work, but with a
    readable `str()` (KeyError's own quotes its argument).
    """

    def __init__(self, kind: str, name: str, suggestions: tuple[str, ...]) -> None:
        super().__init__(name)
        self.kind = kind
        self.name = name
        self.suggestions = suggestions

    def __str__(self) -> str:
        message = f"unknown {self.kind} {self.name!r}"
        if self.suggestions:
            quoted = ", ".join(repr(s) for s in self.suggestions)
            message += f"; did you mean {quoted}?"
        return message


class Registry(Generic[FactoryT]):
    """Name -> factory function, filled with the `register(name)` decorator.

    Every factory of one registry shares one signature (the registry's `kind` documents which);
    `get` raises `UnknownNameError` with did-you-mean suggestions on a miss.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, FactoryT] = {}

    def register(self, name: str) -> Callable[[FactoryT], FactoryT]:
        """Decorator: file the decorated factory under `name` and return it unchanged."""
        if name in self._factories:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")

        def decorate(factory: FactoryT) -> FactoryT:
            if name in self._factories:
                raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorate

    def get(self, name: str) -> FactoryT:
        """The factory registered as `name`, or `UnknownNameError` naming the closest ones."""
        try:
            return self._factories[name]
        except KeyError:
            suggestions = tuple(difflib.get_close_matches(name, self._factories, n=3))
            raise UnknownNameError(self.kind, name, suggestions) from None

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self._factories)})"
