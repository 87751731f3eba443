"""What every benchmark script reports about the device: its name, a synchronisation point for
timing, peak memory (CUDA: max allocated; CPU: the process's peak resident set, which only
grows, so later rows include earlier ones), and how many tensor operations a piece of work runs.

`count_operations` counts the aten operations that compute (views excluded) as torch dispatches
them: on a GPU nearly each one is a kernel launch, so it is the launch count of a launch-bound
step, measured on any device (a captured step dispatches only its input copies: one replay
launches the rest).

`optional` imports a module a variant needs (compiled cells, seeds together) or raises an
ImportError naming the option; `variant_label` names a benchmark row. Run as a script,
`python benchmarks/_device.py summarise DIR` reads the JSON files the benchmark scripts wrote into
DIR and writes DIR/summary.md: every row with its ratio to the plain path and the authors' figures.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from attdarts.records import cpu_model

    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


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


def optional(module: str, option: str):
    """`module`, or an ImportError saying that `option` needs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            raise ImportError(f"{option} needs {module}, which this checkout does not have") from None
        raise


def variant_label(path: str, args) -> str:
    """`grouped+graphs+bf16+channels_last+compile+together4`: the path and what is on."""
    parts = [path]
    if getattr(args, "graphs", False):
        parts.append("graphs")
    if getattr(args, "amp", None):
        parts.append(args.amp)
    if getattr(args, "channels_last", False):
        parts.append("channels_last")
    if getattr(args, "compile", False):
        parts.append("compile")
    if getattr(args, "seeds_together", 1) > 1:
        parts.append(f"together{args.seeds_together}")
    return "+".join(parts)


# The authors' code on one H200 (benchmarks/results/2026-11-28-nvidia-h200/README.md): ms per
# search iteration by order, ms per training step (batch 96, fp32) by genotype
AUTHORS_SEARCH_MS = {1: 2850.0, 2: 9250.0}
AUTHORS_TRAIN_MS = {"att_darts": 355.0, "darts_v2": 130.0}


def _ratio(reference: float | None, value: float) -> str:
    return "-" if not reference else f"{reference / value:.2f}x"


def _variant(row: dict) -> str:
    """The row's variant; graphs asked for off CUDA ran eagerly, and the label says so."""
    label = row.get("variant", row.get("path", "?"))
    if row.get("graphs_requested") and not row.get("graphs"):
        label += " (eager fallback)"
    return label


def summarise(folder: Path) -> str:
    """A Markdown table per kind (search, training) of every row in `folder`'s JSON files."""
    search, training, missing, device = [], [], [], None
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        device = device or result.get("device")
        for row in result.get("rows", result.get("results", [])):
            if "not_available" in row or "error" in row:
                where = (f"order {row['order']}" if "order" in row
                         else f"{row.get('genotype')}, {row.get('mode')}")
                missing.append(f"- {path.name}: {row.get('variant')} ({where}): "
                               f"{row.get('not_available') or row.get('error')}")
            elif "ms_per_iteration" in row:
                search.append(row)
            else:
                training.append(row)
    lines = [f"# Benchmark summary: {device}", ""]
    notes = folder / "device.txt"
    if notes.exists() and "DRY RUN" in notes.read_text():
        lines += ["**Dry run** on a CPU at a tiny size: it checks the script and its outputs; the "
                  "numbers and ratios below measure nothing.", ""]
    if search:
        plain = {r["order"]: r["ms_per_iteration"] for r in search if r["variant"] == "plain"}
        lines += ["| search variant | order | ms/iteration | ms per seed | vs plain | vs authors' "
                  "H200 | peak MiB | 50 epochs per seed (h) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in search:
            lines.append(
                f"| {_variant(r)} | {r['order']} | {r['ms_per_iteration']:,.1f} | "
                f"{r['ms_per_seed_iteration']:,.1f} | "
                f"{_ratio(plain.get(r['order']), r['ms_per_seed_iteration'])} | "
                f"{_ratio(AUTHORS_SEARCH_MS.get(r['order']), r['ms_per_seed_iteration'])} | "
                f"{r['peak_memory_mib']:,.0f} | {r['search_hours_50_epochs']:.2f} |")
        lines.append("")
    if training:
        plain = {r["genotype"]: r["ms_per_step"] for r in training
                 if r.get("variant") == "plain" and r.get("mode") == "fp32"}
        lines += ["| training variant | genotype | mode | ms/step | images/s | vs plain fp32 | "
                  "vs authors' H200 | peak MiB | 600 epochs (h) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in training:
            lines.append(
                f"| {_variant(r)} | {r['genotype']} | {r['mode']} | "
                f"{r['ms_per_step']:,.1f} | {r['images_per_s']:,.1f} | "
                f"{_ratio(plain.get(r['genotype']), r['ms_per_step'])} | "
                f"{_ratio(AUTHORS_TRAIN_MS.get(r['genotype']), r['ms_per_step'])} | "
                f"{r['peak_memory_mib']:,.0f} | {r['hours_600_epochs']:.1f} |")
        lines.append("")
    if missing:
        lines += ["Not measured:", "", *missing, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "summarise":
        sys.exit("usage: python benchmarks/_device.py summarise RESULTS_DIR")
    folder = Path(sys.argv[2])
    text = summarise(folder)
    (folder / "summary.md").write_text(text)
    print(text)
