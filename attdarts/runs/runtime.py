"""What every loop needs around its steps: processes, devices, determinism, RNG state, progress.

One home for the pieces that search and training share: joining the
torchrun process group, choosing the default device, deterministic kernels (restored afterwards,
because the setting is global), seeding and saving every random generator, a progress bar that
is a no-op when disabled, and the collective operations of data-parallel runs.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "DeviceError",
    "Process",
    "all_reduce",
    "broadcast_buffers",
    "check_device",
    "check_finite",
    "default_device",
    "determinism",
    "processes",
    "progress",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "set_threads",
    "strip_module_prefix",
    "wrap_data_parallel",
]


# ---------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class Process:
    """This process's place in a torchrun group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def processes(device: str | None) -> Iterator[tuple[Process, torch.device]]:
    """Join the torchrun process group when RANK / WORLD_SIZE say so (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Process(), torch.device(device or default_device())
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    wanted = torch.device(device or default_device())
    if wanted.type == "cuda":
        torch.cuda.set_device(local_rank)
        wanted = torch.device("cuda", local_rank)
    backend = "nccl" if wanted.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    try:
        yield Process(rank, world_size), wanted
    finally:
        torch.distributed.destroy_process_group()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class DeviceError(ValueError):
    """A `--device` that does not exist here; the message is one line for a user."""


def check_device(device: str | torch.device | None) -> torch.device:
    """The device a run asked for, checked before anything runs: cpu, cuda, cuda:N (N below the
    number of GPUs) or mps where torch has it; anything else raises `DeviceError`."""
    if device is None:
        return torch.device(default_device())
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown device '{device}' (expected cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{device}': CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"device '{device}' does not exist: this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device '{device}': MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise DeviceError(f"device '{device}' is not supported (expected cpu, cuda or cuda:N)")
    return parsed


def set_threads(threads: int) -> None:
    """Intra-op and inter-op torch threads for this process (`--threads`).

    torch fixes the inter-op pool at its first parallel operation; when that has happened the
    intra-op setting still applies and the inter-op one is left as it is.
    """
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        log.debug("inter-op threads already fixed; --threads sets the intra-op threads only")


def wrap_data_parallel(model: nn.Module, process: Process, device: torch.device, *,
                       every_weight: bool = True) -> nn.Module:
    """`model` in DistributedDataParallel under torchrun, or `model` itself in one process.
    `every_weight=False`: some weights get no gradient (a search stage's dropped candidates)."""
    if process.world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=not every_weight)


# ---------------------------------------------------------------------------------------------
# Determinism and random state


@contextmanager
def determinism(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for `--deterministic` (restored afterwards: the setting is global).

    On CUDA, operations without a deterministic kernel warn instead of failing.
    """
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state (torch, Python, NumPy, CUDA when in use), as checkpointable values."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what `rng_state` returned (also after a checkpoint round trip turned tuples into
    lists)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------------------
# Progress and checks


class _NoBar:
    """What `progress` returns when disabled: accepts a bar's calls and shows nothing."""

    def update(self, count: int) -> None:
        pass

    def set_description(self, description: str) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress(enabled: bool, total: int, initial: int, description: str, *, file=None,
             leave: bool = True):
    """The one progress bar of every loop: tqdm on stderr (or `file`) with rate and ETA, or a
    silent stand-in when not `enabled`. `leave=False` clears it when closed (train's per-epoch
    bar, followed by the epoch's log line)."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="step",
                file=file if file is not None else sys.stderr, dynamic_ncols=True, leave=leave,
                mininterval=1.0)


def check_finite(*tensors: torch.Tensor) -> bool:
    """Whether every element of every tensor is finite (no NaN, no infinity)."""
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors)


# ---------------------------------------------------------------------------------------------
# Data-parallel collectives


def all_reduce(values: torch.Tensor, process: Process) -> torch.Tensor:
    """The sum of `values` over every process (a copy; `values` itself is left as it is)."""
    if process.world_size > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
    return values


def broadcast_buffers(model: nn.Module, process: Process) -> None:
    """Evaluate every rank's shard with rank 0's BatchNorm statistics (the ones checkpointed)."""
    if process.world_size > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept weights saved from a DistributedDataParallel (or DataParallel) wrapper."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict
