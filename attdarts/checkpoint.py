"""Crash-safe files: atomic writes and checkpoints that refuse to load when damaged.

A run can be killed at any instant (SIGKILL, pre-emption, a full disk). Every file is therefore
written to a temporary file in the same directory, flushed and fsync'ed, then moved over the old
one with `os.replace`, which is atomic on POSIX: a reader sees the old file or the new one, never
half of one. Loading turns every failure (missing, truncated, corrupt, written for a different
genotype) into a `CheckpointError` with a message meant for a user, never a torch traceback.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

FORMAT_KEY = "attdarts_format"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, damaged, or written for something else."""


class WriteError(CheckpointError, OSError):
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) as a checkpoint, atomically."""
    import torch

    payload = {FORMAT_KEY: FORMAT_VERSION, **state}
    atomic_write(path, lambda file: torch.save(payload, file))


def load(
    path: str | os.PathLike,
    *,
    map_location: Any = "cpu",
    expect: Mapping[str, Any] | None = None,
    what: str = "checkpoint",
) -> dict[str, Any]:
    """Read a checkpoint written by `save`.

    `expect` maps keys to the values the caller requires (for instance the genotype's text): a
    checkpoint that holds a different value is refused, so a run cannot silently continue with
    weights that belong to another network.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: the {what} is empty (the write was interrupted?)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path}: the {what} is truncated or corrupt and cannot be read ({reason})"
        ) from None
    if not isinstance(state, dict) or state.get(FORMAT_KEY) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not an attdarts {what} (format marker missing)")
    state = dict(state)
    del state[FORMAT_KEY]
    for key, wanted in (expect or {}).items():
        if key not in state:
            raise CheckpointError(f"{path}: the {what} has no '{key}' entry")
        if state[key] != wanted:
            raise CheckpointError(
                f"{path}: the {what} was written for a different {key.replace('_', ' ')}"
            )
    return state


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
