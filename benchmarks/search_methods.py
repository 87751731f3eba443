"""Partial channels (PC-DARTS) on the paper's search space: speed and memory for K = 1, 2, 4.

    python benchmarks/search_methods.py                    # C=16, 8 cells, batch 64, first order
    python benchmarks/search_methods.py --quick            # tiny sizes, a smoke test

Builds the paper's supernet (genotypes/spaces/att_darts.geno: 8 operations x 6 attentions after
every edge) with `partial_channels(k=K)` and nothing else changed (edge normalisation off, so that
the rows differ in K only; `--edge-normalisation` turns it on for every row), and times first-
order search iterations (one architecture step + one weight step, the real
`attdarts.runs.search.bilevel.Bilevel`) on random 32x32 batches already in memory, on the CPU,
with one thread unless --threads says otherwise. Both the wall time and the process's CPU time
per iteration are reported: on a shared machine the CPU time is the fairer comparison, since
wall time also counts the time other processes held the core.

Memory: each K runs in a fresh Python process, and its peak is that process's maximum resident
set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), which tracemalloc cannot see (torch allocates
outside Python's allocator). Reported as `peak` (the whole process: interpreter, torch, model,
optimiser states and the activations of the step) and `step` (peak minus the resident set
measured just before the first iteration, i.e. what the iterations themselves added: mostly the
activations kept for the backward pass).
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

SPACE = ROOT / "genotypes" / "spaces" / "att_darts.geno"


def run_one(args: argparse.Namespace) -> dict:
    """One K in this process; returns its row."""
    import torch

    from attdarts.language import ir
    from attdarts.language.transform import parse_file
    from attdarts.networks.supernet import compile_supernet
    from attdarts.runs.search import Bilevel, SearchConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = [ir.Call(name="partial_channels", kwargs=(("k", args.child),))]
    if args.edge_normalisation:
        methods.append(ir.Call(name="edge_normalisation"))
    space = parse_file(SPACE).space().model_copy(update={"methods": tuple(methods)})
    config = SearchConfig(space_file=str(SPACE), order=1, batch_size=args.batch_size,
                          channels=args.channels, layers=args.layers, grouped=args.path == "grouped")
    model = compile_supernet(space, channels=args.channels, layers=args.layers,
                             grouped=config.grouped)
    bilevel = Bilevel(model, config)
    timing = time_steps(bilevel, batch_size=args.batch_size, warmup=args.warmup,
                        steps=args.steps)
    return {"partial_channels": args.child, "edge_normalisation": args.edge_normalisation,
            **timing,
            "weights": sum(p.numel() for p in model.weights())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,2,4", help="comma-separated K values")
    parser.add_argument("--steps", type=int, default=2, help="timed iterations per K")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--path", choices=("grouped", "plain"), default="grouped",
                        help="grouped (what attdarts search runs) or plain edges")
    parser.add_argument("--edge-normalisation", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test: batch 2, C=8, 3 cells, 1 step")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.channels, args.layers = 2, 8, 3
        args.steps, args.warmup = 1, 0
    if args.child is not None:
        print(json.dumps(run_one(args)), flush=True)
        return

    print(f"CPU, {args.threads} thread(s); att_darts.geno, batch {args.batch_size}, "
          f"C={args.channels}, {args.layers} cells, first order, {args.path} path, edge "
          f"normalisation {'on' if args.edge_normalisation else 'off'}; {args.warmup} warm-up + "
          f"{args.steps} timed iterations; load before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for k in (int(part) for part in args.ks.split(",")):
        command = [sys.executable, __file__, "--child", str(k), *_forwarded(args)]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if done.returncode != 0:
            print(f"K={k}: failed (exit {done.returncode}): {done.stderr.strip()[-500:]}",
                  flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"K={k}: {row['ms_per_iteration']:.0f} ms/iteration (CPU time "
              f"{row['cpu_ms_per_iteration']:.0f} ms), peak {row['peak_mib']:.0f} "
              f"MiB (step {row['step_mib']:.0f} MiB), {row['weights']:,} weights; load "
              f"{os.getloadavg()[0]:.2f}", flush=True)
    base = next((row for row in rows if row["partial_channels"] == 1), None)
    for row in rows:
        if base is not None and row is not base:
            print(f"K={row['partial_channels']} vs K=1: "
                  f"{base['ms_per_iteration'] / row['ms_per_iteration']:.2f}x faster ("
                  f"{base['cpu_ms_per_iteration'] / row['cpu_ms_per_iteration']:.2f}x in CPU "
                  "time), peak "
                  f"{row['peak_mib'] / base['peak_mib']:.2f} of K=1's, step memory "
                  f"{row['step_mib'] / base['step_mib']:.2f} of K=1's", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


def _forwarded(args: argparse.Namespace) -> list[str]:
    options = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
               str(args.batch_size), "--channels", str(args.channels), "--layers",
               str(args.layers), "--path", args.path, "--threads", str(args.threads)]
    return options + (["--edge-normalisation"] if args.edge_normalisation else [])


if __name__ == "__main__":
    main()
