"""How many CPU threads torch should use for attdarts's own workloads: a few steps of each at 1, 2
and N threads (N = the CPUs this process may use), each in a fresh process.

    python benchmarks/threads.py                          # every workload below
    python benchmarks/threads.py --workloads search-tiny,train-tiny --threads 1,2,4
    python benchmarks/threads.py --json benchmarks/results/DATE-cpu/threads.json

Workloads (the CPU, grouped cells, random 32x32 images already in memory, first-order search):

| name | what | size |
|---|---|---|
| search-tiny | README's smoke / plot search | att_darts space, C=4, 5 cells, batch 4 |
| search-paper | the paper's search | att_darts space, C=16, 8 cells, batch 64 |
| train-tiny | README's synthetic training | darts_v2, C=8, 5 cells, batch 16 |
| train-demo | scripts/demo.sh's training | att_darts, C=8, 5 cells, batch 64 |
| train-paper | the paper's evaluation network | att_darts, C=36, 20 cells, batch 96 |
| cli-plot | README's plot example, whole command | `attdarts search ... --max-steps-per-epoch 2` |

The steps are `benchmarks/search_step.py` and `benchmarks/train_step.py` (the real search
iteration and training step); `cli-plot` times the whole command, start-up included. Each row
runs in its own process with `OMP_NUM_THREADS` and `--threads` set to the count, and records the
wall time per step, the CPU time of the process per step (CPU seconds above the wall seconds are
threads waiting for each other), and the load average before and after: on a shared machine the
numbers move with what else runs, so the load is part of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from attdarts.records import cpu_model  # noqa: E402

# name -> (script, arguments, timed steps); the warm-up is one step everywhere
WORKLOADS: dict[str, tuple[str, list[str], int]] = {
    "search-tiny": ("search_step.py", ["--channels", "4", "--layers", "5", "--batch-size", "4"], 6),
    "search-paper": ("search_step.py", ["--channels", "16", "--layers", "8", "--batch-size", "64"], 1),
    "train-tiny": ("train_step.py", ["--genotypes", "darts_v2", "--channels", "8", "--layers", "5",
                                     "--batch-size", "16"], 10),
    "train-demo": ("train_step.py", ["--genotypes", "att_darts", "--channels", "8", "--layers", "5",
                                     "--batch-size", "64"], 5),
    "train-paper": ("train_step.py", ["--genotypes", "att_darts", "--channels", "36", "--layers",
                                      "20", "--batch-size", "96"], 2),
    "cli-plot": ("cli", ["search", str(ROOT / "genotypes/spaces/att_darts.geno"), "--dataset",
                         "synthetic", "--channels", "4", "--layers", "5", "--batch-size", "4",
                         "--epochs", "2", "--max-steps-per-epoch", "2", "--device", "cpu",
                         "--quiet"], 4),
}
COMMON = {"search_step.py": ["--device", "cpu", "--paths", "grouped", "--orders", "1", "--no-count",
                             "--warmup", "1"],
          "train_step.py": ["--device", "cpu", "--paths", "grouped", "--modes", "fp32", "--no-count",
                            "--warmup", "1"]}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_one(name: str, threads: int) -> dict:
    script, arguments, steps = WORKLOADS[name]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as scratch:
        result_file = Path(scratch) / "row.json"
        if script == "cli":
            command = [sys.executable, "-m", "attdarts.cli", *arguments, "--threads", str(threads),
                       "--out", str(Path(scratch) / "run")]
        else:
            command = [sys.executable, str(HERE / script), *COMMON[script], *arguments,
                       "--steps", str(steps), "--threads", str(threads), "--json", str(result_file)]
        load_before = os.getloadavg()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        finished = subprocess.run(command, env=env, capture_output=True, text=True, cwd=scratch)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        row = {"workload": name, "threads": threads, "steps": steps, "process_wall_s": wall,
               "process_cpu_s": cpu, "load_before": load_before[0], "load_after": load_after[0],
               "returncode": finished.returncode}
        if finished.returncode != 0:
            row["error"] = (finished.stderr or finished.stdout).strip().splitlines()[-1:]
            return row
        if script == "cli":
            row["ms_per_step"] = None  # whole command: start-up, data, 4 iterations, outputs
        else:
            rows = json.loads(result_file.read_text())["rows" if script == "search_step.py" else "results"]
            measured = rows[0]
            row["ms_per_step"] = measured.get("ms_per_iteration", measured.get("ms_per_step"))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--threads", help="comma-separated counts [1,2,N]")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every row")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    cpus = usable_cpus()
    counts = (sorted({int(t) for t in args.threads.split(",")}) if args.threads
              else sorted({1, 2, cpus}))
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    print(f"CPU: {cpu_model()}, {cpus} usable CPUs; threads {counts}; load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'workload':<13} {'threads':>7} {'ms/step':>10} {'process s':>10} {'CPU s':>8} "
          f"{'load':>11}", flush=True)
    rows = []
    for _ in range(args.repeat):
        for name in names:
            for threads in counts:  # interleaved, so that a change of load hits every count
                row = run_one(name, threads)
                rows.append(row)
                step = "failed" if row["returncode"] else (
                    "-" if row["ms_per_step"] is None else f"{row['ms_per_step']:.1f}")
                print(f"{name:<13} {threads:>7} {step:>10} {row['process_wall_s']:>10.1f} "
                      f"{row['process_cpu_s']:>8.1f} {row['load_before']:>5.2f}-{row['load_after']:<5.2f}",
                      flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model(), "usable_cpus": cpus,
                                         "python": platform.python_version(), "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
