"""Is a cost table additive? Predicted (sum of table entries) against measured, for random
genotypes of a space (issue 21, part 2).

    python benchmarks/costs.py                       # att_darts and darts, C=36, 20 cells, CPU
    python benchmarks/costs.py --quick               # tiny sizes, a smoke test
    python benchmarks/costs.py --clock cpu --out benchmarks/results/DATE-cpu

For each space, one cost table with latency (`attdarts.networks.costs`, the same code as
`attdarts cost --latency`), then for each of --genotypes random genotypes of the space (and
every zoo genotype the table prices): multiply-adds and parameters predicted by the table and
counted by `compile`'s counter (they must be equal: any difference is a bug and the script
exits 1), and latency predicted by the table and measured on the whole network, the same way
(eval mode, no gradient, the median of --repeats forwards after --warmup, --threads threads,
--batch-size images), on the plain path (edges one by one, as the table times them) and the
grouped path (`attdarts train`'s default). The summary gives measured / predicted (mean, min,
max) and the Pearson and Spearman correlations over the genotypes: a lookup table's known
weakness is that the modules' sum misses what happens between them and how they share caches.

On a shared machine the wall clock counts the time other processes held the core; `--clock
cpu` times the thread's CPU time instead. The load (`os.getloadavg`) is recorded before and
after each space. Results: a text report on stdout, and with --out DIR, DIR/costs.json and
DIR/costs.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = float(rank)
    return ranks


def _pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")


def run_space(name: str, args: argparse.Namespace, report) -> dict:
    import torch

    from attdarts.language.transform import parse_file
    from attdarts.networks.cost_meter import build_cost_table, measure_latency
    from attdarts.networks.costs import LatencySettings
    from attdarts.networks.measure import measure
    from attdarts.networks.network import compile_network
    from attdarts.networks.budget_derive import random_genotype

    space = parse_file(ROOT / "genotypes" / "spaces" / f"{name}.geno").space()
    settings = LatencySettings(device=args.device, batch_size=args.batch_size,
                               threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                               clock=args.clock)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    table = build_cost_table(space, channels=args.channels, layers=args.layers, latency=settings)
    table_seconds = time.perf_counter() - started
    report(f"## space {name}: {table.describe()}")
    report(f"table built in {table_seconds:.1f} s; load before {load_before:.2f}; fixed part "
           f"{table.fixed['latency_ms']:.3f} ms")
    generator = random.Random(args.seed)
    genotypes = [random_genotype(space, generator, name=f"random{i:02d}")
                 for i in range(args.genotypes)]
    for path in sorted((ROOT / "genotypes").glob("*.geno")):
        genotype = parse_file(path).genotype()
        if not table.problems(genotype):
            genotypes.append(genotype)
    rows = []
    report(f"{'genotype':<12} {'mult-adds':>13} {'parameters':>11} {'pred ms':>9} "
           f"{'plain ms':>9} {'ratio':>6} {'grouped ms':>10} {'ratio':>6}  counts")
    for genotype in genotypes:
        predicted = table.price(genotype)
        summary, _ = measure(genotype, dataset="cifar10", channels=args.channels,
                             layers=args.layers, auxiliary=False)
        counts_equal = (summary["multiply_adds"], summary["parameters"]) == \
            (predicted["multiply_adds"], predicted["parameters"])
        measured = {}
        for path in ("plain", "grouped"):
            model = compile_network(genotype, channels=args.channels, layers=args.layers,
                                    auxiliary=False, grouped=path == "grouped")
            measured[path] = measure_latency(model, settings, input_size=32)
        row = {
            "genotype": genotype.name,
            "multiply_adds": summary["multiply_adds"],
            "parameters": summary["parameters"],
            "predicted_multiply_adds": predicted["multiply_adds"],
            "predicted_parameters": predicted["parameters"],
            "counts_equal": counts_equal,
            "predicted_ms": predicted["latency_ms"],
            "plain_ms": measured["plain"][0], "plain_spread_ms": measured["plain"][1],
            "grouped_ms": measured["grouped"][0], "grouped_spread_ms": measured["grouped"][1],
            "load": os.getloadavg()[0],
        }
        rows.append(row)
        report(f"{genotype.name:<12} {row['multiply_adds']:>13,} {row['parameters']:>11,} "
               f"{row['predicted_ms']:>9.3f} {row['plain_ms']:>9.3f} "
               f"{row['plain_ms'] / row['predicted_ms']:>6.3f} {row['grouped_ms']:>10.3f} "
               f"{row['grouped_ms'] / row['predicted_ms']:>6.3f}  "
               f"{'equal' if counts_equal else 'DIFFERENT'}")
    summary = {"space": name, "table": table.describe(), "table_seconds": table_seconds,
               "load_before": load_before, "load_after": os.getloadavg()[0],
               "genotypes": len(rows), "counts_equal": sum(r["counts_equal"] for r in rows)}
    predicted = [r["predicted_ms"] for r in rows]
    multiply_adds = [float(r["multiply_adds"]) for r in rows]
    for path in ("plain", "grouped"):
        measured = [r[f"{path}_ms"] for r in rows]
        ratios = [m / p for m, p in zip(measured, predicted)]
        summary[path] = {
            "ratio_mean": sum(ratios) / len(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "pearson": _pearson(predicted, measured),
            "spearman": _pearson(_ranks(predicted), _ranks(measured)),
            "pearson_multiply_adds": _pearson(multiply_adds, measured),
        }
        s = summary[path]
        report(f"{path}: measured / predicted {s['ratio_mean']:.3f} (min {s['ratio_min']:.3f}, "
               f"max {s['ratio_max']:.3f}); correlation Pearson {s['pearson']:.3f}, Spearman "
               f"{s['spearman']:.3f}; multiply-adds against measured: Pearson "
               f"{s['pearson_multiply_adds']:.3f}")
    report(f"counts equal for {summary['counts_equal']} of {summary['genotypes']} genotypes; "
           f"load after {summary['load_after']:.2f}")
    report("")
    return {"summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", default="att_darts,darts", help="zoo spaces, comma-separated")
    parser.add_argument("--genotypes", type=int, default=20, help="random genotypes per space")
    parser.add_argument("--channels", type=int, default=36)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test: C=4, 3 cells, 2 genotypes, 2 repeats")
    parser.add_argument("--out", type=Path, help="write costs.json and costs.txt here")
    args = parser.parse_args()
    if args.quick:
        args.channels, args.layers, args.genotypes = 4, 3, 2
        args.warmup, args.repeats = 0, 2

    import torch

    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    report(f"# benchmarks/costs.py: C={args.channels}, {args.layers} cells, {args.device}, "
           f"batch {args.batch_size}, {args.threads} thread(s), {args.clock} clock, median of "
           f"{args.repeats} after {args.warmup} warm-up; torch {torch.__version__}, "
           f"{platform.python_version()}, {os.cpu_count()} CPUs")
    results = [run_space(name, args, report) for name in args.spaces.split(",")]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "costs.json").write_text(json.dumps(
            {"settings": {key: value for key, value in vars(args).items() if key != "out"},
             "torch": torch.__version__, "spaces": results}, indent=2, default=str) + "\n")
        (args.out / "costs.txt").write_text("\n".join(lines) + "\n")
    if any(r["summary"]["counts_equal"] != r["summary"]["genotypes"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
