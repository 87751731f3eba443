"""What every benchmark script reports about the device: its name, a synchronisation point for
timing, peak memory (CUDA: max allocated; CPU: the process's peak resident set, which only
grows, so later rows include earlier ones), and how many tensor operations a piece of work runs.

`count_operations` counts the aten operations that compute (views excluded) as torch dispatches
them: on a GPU nearly each one is a kernel launch, so it is the launch count of a launch-bound
step, measured on any device."""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


class _OperationCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_operations(work) -> int:
    """Run `work()` once and return the number of non-view aten operations it dispatched."""
    with _OperationCounter() as counter:
        work()
    return counter.count
