"""Files: reading DSL and interop text with located errors, and crash-safe atomic writes.

Shared by the DSL transform and the interop readers: a directory, an unreadable file, a file
over `MAX_BYTES` or bytes that are not UTF-8 become a `DslError` (the last with the line and
column of the first bad byte), never an exception from the standard library.

A UTF-8 byte-order mark (Windows editors write one) is accepted and dropped: it is not part of
the text, so columns on line 1 count from the first visible character.

A run can be killed at any instant (SIGKILL, pre-emption, a full disk). Every file is therefore
written to a temporary file in the same directory, flushed and fsync'ed, then moved over the old
one with `os.replace`, which is atomic on POSIX: a reader sees the old file or the new one, never
half of one.
"""

from __future__ import annotations

import codecs
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from attdarts.language.errors import DslError, Problem, Span

MAX_BYTES = 64 * 1024 * 1024
BOM = codecs.BOM_UTF8
PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """A folder of the project's own data that a checkout keeps at its top level (`grammar/`,
    `genotypes/`) and an installed wheel carries inside the package (`attdarts/grammar/`,
    `attdarts/genotypes/`: pyproject.toml's force-include). The installed place wins; when neither
    exists, the installed place is returned, for the message that names it."""
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    return PACKAGE / name


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


class FileError(Exception):
    """A file of ours that cannot be read or written; the message is meant for a user (the CLI
    prints it as one line)."""


class WriteError(FileError, OSError):
    """A file that could not be written (full disk, read-only filesystem, no permission).

    The message names the file and the reason, e.g. ``cannot write runs/x/last.pt: No space left
    on device``; the old file, if any, is left as it was and no temporary file remains. It is also
    an OSError, so callers that treat a failed write as optional (the decoded-image cache) still
    catch it.
    """


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file next to `path`, then move it over `path` atomically.

    A symbolic link is written through: its target is replaced and the link stays. An existing
    file keeps its permission bits; a new one gets 0666 minus the umask, as `open` would give it.
    Any failure to create, write, flush, sync or rename raises `WriteError`; the temporary file is
    removed and the old file is untouched.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    temporary = None
    file = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = _mode_for(target)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                             dir=target.parent)
        file = _RecordingFile(_open_for_writing(handle))
        with file:
            os.fchmod(file.fileno(), mode)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        cause = error if isinstance(error, OSError) else None
        if cause is None and isinstance(error, RuntimeError) and file is not None:
            # torch.save reports a failed write as a RuntimeError ("unexpected pos ..."); the
            # OSError behind it was recorded by the file wrapper
            cause = file.failure
            if cause is None and _looks_like_failed_write(error):
                cause = error
        if cause is None:
            raise
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        raise WriteError(f"cannot write {path}: {reason}") from None
    _fsync_directory(target.parent)


def _open_for_writing(handle: int) -> BinaryIO:
    """The temporary file as a binary file object (a separate function so tests can replace it)."""
    return os.fdopen(handle, "wb")


def _mode_for(target: Path) -> int:
    """Permission bits for the new file: the old file's, or 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _looks_like_failed_write(error: RuntimeError) -> bool:
    text = str(error)
    return "unexpected pos" in text or "failed writing" in text


class _RecordingFile:
    """A binary file that remembers the first OSError of a write or flush, because torch.save
    turns it into a RuntimeError that no longer says the disk is full."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.failure: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.failure = self.failure or error
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as error:
            self.failure = self.failure or error
            raise

    def fileno(self) -> int:
        return self._file.fileno()

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self) -> "_RecordingFile":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._file.close()
        except OSError as error:
            self.failure = self.failure or error
            if exc[0] is None:
                raise


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: through symbolic links, relative paths and hard links
    (a command refuses to write its output over its input)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
