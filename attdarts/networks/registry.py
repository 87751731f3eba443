"""Name -> torch factory, read from the catalog: the catalog is the registry.

Each `catalog.Entry` names its factory as a dotted path ("package.module:function"); this module
imports it the first time a network asks for the name, so the front end never loads torch and a
plug-in adds an operation or attention with one `catalog.register(Entry(...))`. The key is
exactly the DSL token. Candidate order in a search comes from the search-space declaration,
never from here.

Signatures, one per kind:
- operation: ``factory(channels, stride, *, affine=True, pool_bn=False, **kwargs)``
- attention: ``factory(channels, *, spatial, **kwargs)``
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

from attdarts.language import catalog, ir
from attdarts.language.catalog import DuplicateNameError  # noqa: F401 - one error, re-exported
from attdarts.language.errors import DslError, close_names

__all__ = [
    "ATTENTIONS", "OPERATIONS", "DuplicateNameError", "Factories", "UnknownNameError",
    "build_attention", "build_operation", "resolve",
]


class UnknownNameError(KeyError):
    """A registry miss; the message names the closest registered names.

    A `KeyError`, so plain `except KeyError` works, but with a readable `str()` (KeyError's own
    quotes its argument).
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


_RESOLVED: dict[str, Callable[..., object]] = {}


def resolve(path: str) -> Callable[..., object]:
    """Import the factory a dotted path "package.module:attribute" names (cached)."""
    factory = _RESOLVED.get(path)
    if factory is None:
        module, _, attribute = path.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        _RESOLVED[path] = factory
    return factory


class Factories:
    """The factories of one catalog table ("operation" or "attention"), looked up by name."""

    def __init__(self, kind: str, table: dict[str, catalog.Entry]) -> None:
        self.kind = kind
        self._table = table

    def get(self, name: str) -> Callable[..., object]:
        """The factory of `name`, or `UnknownNameError` naming the closest names. A factory that
        cannot be imported (a plug-in's broken dotted path) is a one-line `DslError` naming the
        entry's origin."""
        entry = self._table.get(name)
        if entry is None:
            raise UnknownNameError(self.kind, name, tuple(close_names(name, self._table)))
        try:
            return resolve(entry.factory)
        except (ImportError, AttributeError) as error:
            raise DslError.single(
                f"{self.kind} '{name}' (from '{entry.origin}'): cannot import its factory "
                f"{entry.factory} ({type(error).__name__}: {error})") from None

    def names(self) -> tuple[str, ...]:
        """Catalog names in catalog order."""
        return tuple(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Factories({self.kind!r}, names={list(self._table)})"


OPERATIONS = Factories("operation", catalog.OPERATIONS)
ATTENTIONS = Factories("attention", catalog.ATTENTIONS)


def build_operation(call: ir.Call, channels: int, stride: int, **options: object):
    """The operation module of `call` (options: `affine`, `pool_bn`)."""
    return OPERATIONS.get(call.name)(channels, stride, **options, **call.kwargs_dict())


def build_attention(call: ir.Call, channels: int, spatial: int):
    """The attention module of `call`, built for a `spatial` x `spatial` map."""
    return ATTENTIONS.get(call.name)(channels, spatial=spatial, **call.kwargs_dict())
