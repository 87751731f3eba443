"""P-DARTS's progressive search (genotypes/spaces/pdarts.geno): time and memory per stage.

    python benchmarks/pdarts_stages.py                 # the reference's sizes, batch 8
    python benchmarks/pdarts_stages.py --quick         # tiny sizes, a smoke test

Each stage of the space (5, 11 and 17 cells keeping 8, 5 and 3 operations per edge, skip dropout
0, 0.4 and 0.7; C=16) is built as a search builds it and timed over first-order search
iterations (one architecture step + one weight step of `attdarts.runs.search.bilevel.Bilevel`,
grouped cells, skip dropout at the stage's rate r) on random 32x32 batches already in memory, on
the CPU with one thread unless --threads says otherwise. Which candidates a later stage keeps is
learnt; `--keep dearest` (the default) keeps in every row the candidates with the most weights
(an upper bound on time and memory: the convolutions), `--keep cheapest` those with the fewest,
`--keep skip+dearest` skip_connect and then the dearest (so that skip dropout acts: compare
`--no-skip-dropout` for its cost).

Memory: each stage runs in a fresh Python process; `peak` is its maximum resident set
(`getrusage`), `step` that minus the resident set just before the first iteration (what the
iterations added: mostly the activations kept for the backward pass). Both the wall time and the
process's CPU time per iteration are reported (on a shared machine the CPU time is the fairer
number); the load average is printed with every row.
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

SPACE = ROOT / "genotypes" / "spaces" / "pdarts.geno"


def _masks(model, stage, keep: str) -> dict:
    """Every row keeps the stage's count of candidates: those with the most weights
    (`dearest`), the fewest (`cheapest`), or skip_connect and then the most (`skip+dearest`,
    where skip dropout acts), weights summed over the cells of its type."""
    import torch

    from attdarts.language import kinds

    masks = {}
    for cell_type, tensors in model.architecture_tensors().items():
        masks[cell_type] = {}
        for kind, raw in tensors.items():
            count = stage.counts.get(kind, raw.shape[-1])
            costs = torch.zeros(raw.shape, dtype=torch.float64)
            for cell in model.cells:
                if ("reduce" if cell.reduction else "normal") != cell_type:
                    continue
                for row, edge in enumerate(cell.edges):
                    mixture = edge.first if kind == kinds.OPERATION else edge.then
                    for column in range(raw.shape[-1]):
                        costs[row, column] += sum(p.numel() for p in
                                                  mixture.candidates[column].parameters())
            if keep == "skip+dearest" and "skip_connect" in model.columns[kind]:
                costs[:, model.columns[kind].index("skip_connect")] = float("inf")
            order = torch.sort(costs, dim=-1, descending=keep != "cheapest", stable=True).indices
            masks[cell_type][kind] = torch.zeros(raw.shape, dtype=torch.bool).scatter(
                -1, order[..., :count], True)
    return masks


def run_one(args: argparse.Namespace) -> dict:
    """Stage `args.child` (0-based) in this process; returns its row."""
    import torch

    from attdarts.language.transform import parse_file
    from attdarts.networks.supernet import compile_supernet
    from attdarts.runs.search import Bilevel, SearchConfig, stages

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = parse_file(SPACE).space()
    config = SearchConfig(space_file=str(SPACE), order=1, batch_size=args.batch_size,
                          channels=args.channels, recipe="pdarts", arch_lr=6e-4,
                          arch_init="randn", arch_start_epoch=0)
    plan = stages.Plan.of(space, config)
    stage = plan.stages[args.child]
    layers = args.layers or stage.layers
    model = compile_supernet(space, channels=args.channels, layers=layers, init="randn",
                             grouped=True)
    masks = _masks(model, stage, args.keep)
    model.use_candidates(masks)
    rate = 0.0 if args.no_skip_dropout else stage.skip_dropout
    model.methods.progressive.rate = rate  # the rate r itself (where the warm-up ends)
    bilevel = Bilevel(model, config)
    timing = time_steps(bilevel, batch_size=args.batch_size, warmup=args.warmup,
                        steps=args.steps)
    kept = {kind: int(mask[0].sum()) for kind, mask in masks["normal"].items()}
    return {"stage": args.child + 1, "layers": layers, "kept": kept,
            "skip_dropout": rate, "keep": args.keep, **timing,
            "weights_in_use": sum(p.numel() for name, p in model.named_weights()
                                  if name not in model.idle_weights())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="1,2,3", help="comma-separated stages (1-based)")
    parser.add_argument("--steps", type=int, default=3, help="timed iterations per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, help="cells of every stage (default: the stage's)")
    parser.add_argument("--keep", choices=("dearest", "cheapest", "skip+dearest"),
                        default="dearest")
    parser.add_argument("--no-skip-dropout", action="store_true",
                        help="rate 0 in every stage (what skip dropout costs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu",), default="cpu", help="the CPU only")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test: batch 2, C=4, 3 cells, 1 step")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.channels, args.layers = 2, 4, 3
        args.steps, args.warmup = 1, 0
    if args.child is not None:
        print(json.dumps(run_one(args)), flush=True)
        return

    print(f"CPU, {args.threads} thread(s); pdarts.geno, batch {args.batch_size}, "
          f"C={args.channels}, first order, grouped cells, candidates kept: {args.keep}, skip "
          f"dropout {'off' if args.no_skip_dropout else 'at each stage rate'}; "
          f"{args.warmup} warm-up + {args.steps} timed iterations; load before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for number in (int(part) for part in args.stages.split(",")):
        command = [sys.executable, __file__, "--child", str(number - 1), *_forwarded(args)]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if done.returncode != 0:
            print(f"stage {number}: failed (exit {done.returncode}): "
                  f"{done.stderr.strip()[-500:]}", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["load"] = os.getloadavg()[0]
        rows.append(row)
        print(f"stage {number}: {row['layers']} cells, {row['kept']} kept per edge, skip "
              f"dropout {row['skip_dropout']}: {row['ms_per_iteration']:.0f} ms/iteration (CPU "
              f"time {row['cpu_ms_per_iteration']:.0f} ms), peak {row['peak_mib']:.0f} MiB "
              f"(step {row['step_mib']:.0f} MiB), {row['weights_in_use']:,} weights in use; "
              f"load {row['load']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


def _forwarded(args: argparse.Namespace) -> list[str]:
    options = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
               str(args.batch_size), "--channels", str(args.channels), "--keep", args.keep,
               "--threads", str(args.threads)]
    options += ["--no-skip-dropout"] if args.no_skip_dropout else []
    return options + (["--layers", str(args.layers)] if args.layers else [])


if __name__ == "__main__":
    main()
