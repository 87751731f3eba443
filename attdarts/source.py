"""Reading DSL and interop files as text, with located errors for unreadable input.

Shared by the DSL transform and the interop readers: a directory, an unreadable file, a file
over `MAX_BYTES` or bytes that are not UTF-8 become a `DslError` (the last with the line and
column of the first bad byte), never an exception from the standard library.

A UTF-8 byte-order mark (Windows editors write one) is accepted and dropped: it is not part of
the text, so columns on line 1 count from the first visible character.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from .errors import DslError, Problem, Span

MAX_BYTES = 64 * 1024 * 1024
BOM = codecs.BOM_UTF8


def has_bom(path: str | Path) -> bool:
    """Whether the file starts with a UTF-8 byte-order mark (False when it cannot be read)."""
    try:
        with open(path, "rb") as file:
            return file.read(len(BOM)) == BOM
    except OSError:
        return False


def read_source(path: str | Path) -> str:
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise DslError.single("is a directory, not a genotype file").located(name, None) from None
    except OSError as error:
        raise DslError.single(f"cannot read file: {error.strerror or error}").located(name, None) from None
    return decode_source(data, name)


def decode_source(data: bytes, name: str | None = None) -> str:
    """Bytes of a file -> text without a leading byte-order mark; too large or non-UTF-8 input is
    a DslError."""
    if len(data) > MAX_BYTES:
        raise DslError.single(f"file is too large ({len(data)} bytes; limit {MAX_BYTES})").located(name, None)
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
        problem = Problem(f"file is not UTF-8 text (byte 0x{data[error.start]:02x})",
                          Span(line, column), "genotype files are UTF-8 text")
        raise DslError([problem], name, None) from None
