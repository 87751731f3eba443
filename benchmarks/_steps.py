"""Timing a search's bilevel step on the CPU, shared by the per-method benchmarks
(search_methods.py, samplers.py, pdarts_stages.py): random CIFAR-sized batches drawn up front,
warm-up steps, then timed steps; wall and CPU time per iteration, the process's peak resident
set and what the steps added to it."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def resident_mib() -> float:
    """The process's resident set now, in MiB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_steps(bilevel, *, batch_size: int, warmup: int, steps: int) -> dict:
    """`warmup` then `steps` calls of `bilevel.step` on fixed random batches (seed 0)."""
    import torch

    generator = torch.Generator().manual_seed(0)

    def batch():
        images = torch.randn(batch_size, 3, 32, 32, generator=generator)
        return images, torch.randint(0, 10, (batch_size,), generator=generator)

    batches = [(batch(), batch()) for _ in range(warmup + steps)]
    before = resident_mib()
    for weight_batch, arch_batch in batches[:warmup]:
        bilevel.step(weight_batch, arch_batch)
    started, cpu_started = time.perf_counter(), time.process_time()
    for weight_batch, arch_batch in batches[warmup:]:
        bilevel.step(weight_batch, arch_batch)
    seconds = (time.perf_counter() - started) / steps
    cpu_seconds = (time.process_time() - cpu_started) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return {"ms_per_iteration": seconds * 1000, "cpu_ms_per_iteration": cpu_seconds * 1000,
            "peak_mib": peak, "step_mib": peak - before}
