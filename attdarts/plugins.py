"""Plug-ins: packages that add operations, attention modules, search methods and datasets.

A plug-in is a Python module that, when imported, calls attdarts's registration functions, the
same ones the built-in names go through: `attdarts.language.catalog.register(Entry(...))` for an
operation or attention, `catalog.register_dataset(Dataset(...))` for a dataset, and the search
methods' table's own register function for a search method. Its names are then checked like
built-in ones (did-you-mean hints, located errors); a name that is taken is refused, naming the
plug-in and the origin of the name it clashes with.

Where plug-ins come from, in this order:
- the entry points of group ``attdarts.plugins`` of the installed distributions; the value is a
  module (``attdarts_gct``) or ``module:function`` (imported, then the function is called with
  no arguments); the plug-in's name is the entry point's name;
- module names given to `load` (the CLI's ``--plugin MODULE``) and those in the environment
  variable ``ATTDARTS_PLUGINS`` (separated by commas or `os.pathsep`), for modules that are not
  installed: a module name, found on `sys.path` or in the current directory, or the path of a
  ``.py`` file (its folder is put on `sys.path`, so its factories' dotted paths import too).

`load` runs when the ``attdarts`` command starts and when the top-level API
(`attdarts.search`, ...) is first used; call it yourself before using lower layers directly. It
loads each plug-in once. A plug-in that fails (it does not import, it raises, one of its names
is taken) is reported in one line naming it, its registrations are undone, and everything else
goes on: commands that do not use it are not affected.

This module imports no torch: a plug-in registers dotted paths, and its torch code is imported
when a network is built, as the built-in factories are.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from attdarts.language import catalog, methods

__all__ = ["ENVIRONMENT", "GROUP", "Plugin", "load", "loaded", "tables"]

GROUP = "attdarts.plugins"
ENVIRONMENT = "ATTDARTS_PLUGINS"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugin:
    """One plug-in as loaded: its name (the origin of its entries), where it was named
    ("entry point", "--plugin", ATTDARTS_PLUGINS), the module or entry point value, the names it
    added, and why it failed (None: it loaded)."""

    name: str
    source: str
    target: str
    added: tuple[str, ...] = ()
    error: str | None = None


_LOADED: dict[str, Plugin] = {}  # by target: each module is loaded once per process


def tables() -> list[dict]:
    """The registration tables a failed plug-in's entries are taken out of again."""
    return [catalog.OPERATIONS, catalog.ATTENTIONS, catalog.DATASETS, methods.METHODS]


def loaded() -> tuple[Plugin, ...]:
    """Every plug-in tried in this process, in order, failures included."""
    return tuple(_LOADED.values())


def load(modules: Iterable[str] = (), *, environment: Mapping[str, str] | None = None,
         entry_points: bool = True,
         warn: Callable[[str], None] | None = None) -> list[Plugin]:
    """Load the plug-ins not loaded yet: installed entry points (unless `entry_points` is
    False), then `modules`, then those named by ATTDARTS_PLUGINS in `environment` (default
    `os.environ`). Each failure is passed to `warn` as one line (default: a logged warning).
    Returns the plug-ins tried by this call."""
    warn = warn or log.warning
    variable = (os.environ if environment is None else environment).get(ENVIRONMENT, "")
    requests: list[tuple[str, str, importlib.metadata.EntryPoint | None]] = [
        *((point.name, "entry point", point) for point in
          (_entry_points() if entry_points else ())),
        *((name, "--plugin", None) for name in modules),
        *((name, ENVIRONMENT, None) for name in _split(variable)),
    ]
    tried = []
    for name, source, point in requests:
        target = point.value if point is not None else name
        if target in _LOADED:
            continue
        plugin = _load_one(name, source, point)
        _LOADED[target] = plugin
        tried.append(plugin)
        if plugin.error is not None:
            warn(f"plug-in {plugin.name!r} ({plugin.source}) not loaded: {plugin.error}")
    return tried


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    try:
        points = importlib.metadata.entry_points(group=GROUP)
    except Exception as error:  # a damaged installation must not stop attdarts
        log.warning("cannot read the installed %s entry points: %s", GROUP, error)
        return []
    # a distribution found twice on sys.path lists its entry points twice
    unique = {(point.name, point.value): point for point in points}
    return [unique[key] for key in sorted(unique)]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace(os.pathsep, ",").split(",") if part.strip()]


def _load_one(name: str, source: str, point: importlib.metadata.EntryPoint | None) -> Plugin:
    """Import one plug-in with its entries credited to it; on any failure, undo its entries."""
    origin = point.name if point is not None else _module_name(name)
    target = point.value if point is not None else name
    before = [dict(table) for table in tables()]
    try:
        with catalog.credited_to(origin):
            if point is not None:
                loaded_object = point.load()
                if point.attr:  # module:function
                    loaded_object()
            else:
                _import(name)
    except Exception as error:  # noqa: BLE001 - whatever a plug-in raises, attdarts goes on
        for table, saved in zip(tables(), before):
            table.clear()
            table.update(saved)
        return Plugin(origin, source, target, error=_one_line(error))
    added = tuple(key for table, saved in zip(tables(), before) for key in table
                  if key not in saved)
    return Plugin(origin, source, target, added=added)


def _is_path(name: str) -> bool:
    return name.endswith(".py") or os.sep in name or (os.altsep or os.sep) in name


def _module_of_path(path: Path) -> tuple[Path, str]:
    """(the folder to search, the module name) of a .py file, a package's __init__.py or a
    package folder."""
    if path.name == "__init__.py" or path.is_dir():
        package = path.parent if path.name == "__init__.py" else path
        return package.parent, package.name
    return path.parent, path.stem


def _module_name(name: str) -> str:
    return _module_of_path(Path(name))[1] if _is_path(name) else name


def _import(name: str) -> None:
    """A module by name (the current directory searched too, as `python -m` does), or by path:
    a `.py` file, a package folder or its __init__.py (the folder above put on sys.path, so the
    dotted paths of its factories import too)."""
    importlib.invalidate_caches()  # a module written since the finders last looked
    if _is_path(name):
        path = Path(name).resolve()
        if not path.exists():
            raise ModuleNotFoundError(f"no file or folder {name}")
        folder, module = _module_of_path(path)
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        importlib.import_module(module)
        return
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    importlib.import_module(name)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
