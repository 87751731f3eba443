"""Checkpoints that refuse to load when damaged.

Every checkpoint is written atomically (`attdarts.files.atomic_write`): a reader sees the old file
or the new one, never half of one. Loading turns every failure (missing, truncated, corrupt,
written for a different genotype) into a `CheckpointError` with a message meant for a user,
never a torch traceback.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# the atomic writers are re-exported: callers that write run files next to checkpoints use them
from attdarts.files import (  # noqa: F401
    FileError,
    WriteError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
)

FORMAT_KEY = "attdarts_format"
FORMAT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6


class CheckpointError(FileError):
    """A checkpoint that cannot be used: missing, damaged, or written for something else."""


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
        raise CheckpointError(_load_failure(path, what, data, error)) from None
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


def _load_failure(path: Path, what: str, data: bytes, error: Exception) -> str:
    """Why torch could not read `data`, for a user: torch.save writes a zip archive, so anything
    else is damaged or another kind of file; a zip of pickled objects (a whole model saved by other
    code) fails torch's weights-only loader, whose own message advises loading unsafely."""
    if not data.startswith(_ZIP_MAGIC):
        return (f"{path}: the {what} is truncated or corrupt and cannot be read (not a file "
                f"written by torch.save: damaged, or another kind of file)")
    if "weights only load failed" in str(error).lower():
        return (f"{path}: not an attdarts {what} (it holds Python objects, such as a whole "
                f"model, that attdarts does not load)")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{path}: the {what} is truncated or corrupt and cannot be read ({reason})"


# what each kind of run checkpoint is called in a refusal; the key is the checkpoint's "kind"
RUN_KINDS = {
    "attdarts-train": "a training checkpoint of 'attdarts train'",
    "attdarts-search": "a search checkpoint of 'attdarts search'",
}


def load_run_state(
    path: str | os.PathLike,
    kind: str | None,
    *,
    map_location: Any = "cpu",
    what: str = "checkpoint",
) -> dict[str, Any]:
    """A run's checkpoint (last.pt of a training or search run), read as `load` reads it and
    refused unless its "kind" entry is `kind` (None: checkpoints that carry no kind, as search's
    today). Resuming code loads through here, so every run refuses another run's file alike."""
    state = load(path, map_location=map_location, what=what)
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path}: not {RUN_KINDS.get(kind, repr(kind) + ' checkpoint')}")
    return state
