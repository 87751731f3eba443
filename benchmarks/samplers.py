"""GDAS's single path against the full mixtures of DARTS: time and memory per search iteration.

    python benchmarks/samplers.py                 # C=16, 8 cells, batch 8, first order, 1 thread
    python benchmarks/samplers.py --quick         # tiny sizes, a smoke test

Four spaces of genotypes/spaces/: `darts.geno` (DARTS, every operation on every edge) and
`gdas.geno` (the same space with the `gdas` sampler: one sampled operation per edge), the paper's
attention space `att_darts.geno` and `att_gdas.geno` (one sampled operation and one sampled
attention per edge); each on the plain path (edge by edge) and the grouped one (each cell's
edges in waves; with gdas the wave's edges grouped by their sampled candidate). Each case runs in
a fresh Python process and times first-order search iterations (one architecture step + one
weight step, the real `attdarts.runs.search.bilevel.Bilevel`, tau at its first-epoch value 10,
so the samples are close to uniform) on random 32x32 batches already in memory, on the CPU.
Both wall time and the process's CPU time per iteration are reported (on a shared machine the
CPU time is the fairer comparison). A GDAS iteration's cost depends on what it sampled, so the
timed iterations are averaged (`--steps`).

Memory: the process's peak resident set (`ru_maxrss`, torch allocates outside Python's
allocator), as `peak` (the whole process) and `step` (peak minus the resident set just before
the first iteration: what the iterations added, mostly the activations kept for the backward).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _steps import time_steps  # noqa: E402

SPACES = ROOT / "genotypes" / "spaces"
BASELINES = {"gdas": "darts", "att_gdas": "att_darts"}  # sampler space -> its full mixture


def run_one(args: argparse.Namespace) -> dict:
    """One (space, path) case in this process; returns its row."""
    import torch

    from attdarts.language.transform import read_space
    from attdarts.networks.supernet import compile_supernet
    from attdarts.runs.search import Bilevel, SearchConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = SPACES / f"{args.space}.geno"
    space = read_space(path)
    config = SearchConfig(space_file=str(path), order=1, batch_size=args.batch_size,
                          channels=args.channels, layers=args.layers,
                          grouped=args.path == "grouped")
    model = compile_supernet(space, channels=args.channels, layers=args.layers,
                             grouped=config.grouped)
    model.methods.epoch_start(0, 50)  # what the loop does: gdas's tau = tau_max
    bilevel = Bilevel(model, config)
    timing = time_steps(bilevel, batch_size=args.batch_size, warmup=args.warmup,
                        steps=args.steps)
    return {"space": args.space, "path": args.path, "grouped": model.grouped,
            **timing,
            "weights": sum(p.numel() for p in model.weights())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", default="darts,gdas,att_darts,att_gdas",
                        help="comma-separated spaces of genotypes/spaces/")
    parser.add_argument("--paths", default="plain,grouped")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test: batch 2, C=4, 3 cells, 1 step")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--space", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.channels, args.layers = 2, 4, 3
        args.steps, args.warmup = 1, 0
    if args.space is not None:
        print(json.dumps(run_one(args)), flush=True)
        return

    print(f"CPU, {args.threads} thread(s); batch {args.batch_size}, C={args.channels}, "
          f"{args.layers} cells, first order; {args.warmup} warm-up + {args.steps} timed "
          f"iterations per case, each case in a fresh process; load before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for path in args.paths.split(","):
        for space in args.spaces.split(","):
            command = [sys.executable, __file__, "--space", space, "--path", path,
                       *_forwarded(args)]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if done.returncode != 0:
                print(f"{space} {path}: failed (exit {done.returncode}): "
                      f"{done.stderr.strip()[-500:]}", flush=True)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["load"] = os.getloadavg()[0]
            rows.append(row)
            print(f"{space:10s} {path:8s} {row['ms_per_iteration']:8.0f} ms/iteration (CPU "
                  f"{row['cpu_ms_per_iteration']:6.0f} ms), peak {row['peak_mib']:5.0f} MiB "
                  f"(step {row['step_mib']:5.0f} MiB), {row['weights']:,} weights; load "
                  f"{row['load']:.2f}", flush=True)
    found = {(row["space"], row["path"]): row for row in rows}
    for (space, path), row in found.items():
        base = found.get((BASELINES.get(space), path))
        if base is None:
            continue
        row["time_vs_full"] = row["ms_per_iteration"] / base["ms_per_iteration"]
        row["cpu_time_vs_full"] = row["cpu_ms_per_iteration"] / base["cpu_ms_per_iteration"]
        row["step_memory_vs_full"] = row["step_mib"] / base["step_mib"]
        print(f"{space} vs {base['space']} ({path}): {row['time_vs_full']:.3f} of its time per "
              f"iteration ({row['cpu_time_vs_full']:.3f} in CPU time), peak "
              f"{row['peak_mib'] / base['peak_mib']:.2f} of its peak, step memory "
              f"{row['step_memory_vs_full']:.3f} of its", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
            str(args.batch_size), "--channels", str(args.channels), "--layers",
            str(args.layers), "--threads", str(args.threads)]


if __name__ == "__main__":
    main()
