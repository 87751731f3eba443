"""Public functions of the front end; the CLI is a thin shell over these.

Heavier stages (network, supernet, search, train) have their own public functions in their
modules; they are not imported here so that `import attdarts.api` stays free of torch.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from attdarts.files import WriteError, atomic_write_text, has_bom
from attdarts.language.errors import DslError, Problem
from attdarts.language.printer import format_document
from attdarts.language.transform import parse_file, parse_text, read_source

GENOTYPE_SUFFIXES = (".geno",)


def expand_paths(paths) -> list[Path]:
    """Files as given; directories expand to the genotype files under them, sorted."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in GENOTYPE_SUFFIXES and p.is_file()))
        else:
            files.append(path)
    return files


def format_text(text: str, path: str | None = None) -> str:
    """Canonical text for `text`, verified like black: the output must parse back to the same IR
    (comments included) and format to itself; otherwise nothing is returned for writing."""
    document = parse_text(text, path)
    if not document.items:
        raise _no_items(path)
    formatted = format_document(document)
    again = parse_text(formatted, path)
    if again.model_dump() != document.model_dump() or again != document:
        raise DslError.single("internal error: formatting changed the meaning of the file; "
                              "nothing was written (please report this)").located(path, None)
    if format_document(again) != formatted:
        raise DslError.single("internal error: formatting is not stable; nothing was written "
                              "(please report this)").located(path, None)
    return formatted


@dataclass(frozen=True)
class FormatResult:
    path: Path
    changed: bool


def format_file(path: str | Path, *, write: bool = True) -> FormatResult:
    """Format one file in place (atomically) if it is not already canonical.

    The canonical form has no byte-order mark: a file that starts with one is rewritten without
    it. A symbolic link is written through (the file it points to is formatted, the link stays);
    the file keeps its permission bits. A read-only file is refused with `WriteError`, as is one
    that cannot be written (full disk, read-only filesystem); the file is then left untouched.
    """
    path = Path(path)
    text = read_source(path)
    formatted = format_text(text, str(path))
    changed = formatted != text or has_bom(path)
    if changed and write:
        if _read_only(path):
            raise WriteError(f"cannot write {path}: the file is read-only (make it writable to format it)")
        atomic_write_text(path, formatted)
    return FormatResult(path, changed)


def _read_only(path: Path) -> bool:
    """No write permission for its owner, or none for us (root may write anything: ask the mode)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not mode & stat.S_IWUSR or not os.access(path, os.W_OK)


def check_file(path: str | Path) -> list[DslError]:
    """Every problem in one file, as located errors (empty when the file is fine)."""
    try:
        document = parse_file(path)
    except DslError as error:
        return [error]
    if not document.items:
        return [_no_items(path)]
    return []


def _no_items(path: str | Path | None) -> DslError:
    return DslError([Problem("the file defines no genotype or space",
                             hint="start with 'genotype NAME {' or 'space NAME {'")],
                    None if path is None else str(path), None)


def empty_directories(paths) -> list[Path]:
    """The directories among `paths` that hold no genotype file (fmt and check say so)."""
    return [Path(path) for path in paths if Path(path).is_dir() and not expand_paths([path])]
