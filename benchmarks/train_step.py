"""Time training steps of the paper's evaluation network (C=36, L=20, auxiliary head, drop path
0.2, batch 96) for the Att-DARTS cell and DARTS_V2.

Each step is the real one of `attdarts train`: a batch from the on-device loader (crop, flip,
normalisation, cutout), forward, loss with the auxiliary head, backward, clipping, SGD. After
`--warmup` steps, `--steps` steps are timed between two device synchronisations. Printed per
genotype, path (`plain`: every edge on its own; `grouped`: each cell's ready edges in groups, what
`attdarts train` runs unless --plain) and mode (fp32, bf16 autocast, channels_last, both):
ms/step, images/s, peak memory, tensor operations per step (views excluded: on a GPU nearly each
is a kernel launch; counted on one extra step) and the hours that 600 epochs of 50,000 images
would take at that rate (evaluation excluded).

The step is the loop's `TrainStep`: `--graphs` replays it as one CUDA graph (what `attdarts
train` does on CUDA; warm-up then takes at least 3 eager steps and the capture, and the capture
step's time is printed); off CUDA it runs eagerly and the row says so. `--compile` compiles the
cells (`attdarts.networks.compiled.compile_cells`) when that module exists. A variant that is
missing or fails prints one line saying so and the others go on.

    python benchmarks/train_step.py                       # cuda when available
    python benchmarks/train_step.py --device cuda --paths grouped --graphs --modes fp32,bf16
    python benchmarks/train_step.py --device cpu --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from attdarts.language.transform import parse_file  # noqa: E402
from attdarts.networks.measure import count_parameters  # noqa: E402
from attdarts.runs import data, runtime  # noqa: E402
from attdarts.runs import train  # noqa: E402
from attdarts.runs.train.loop import model_config  # noqa: E402
from attdarts.runs.train.steps import TrainStep  # noqa: E402
from _device import (  # noqa: E402
    count_operations, device_name, optional, peak_memory_mib, synchronize, variant_label,
)

MODES = {
    "fp32": dict(amp=None, channels_last=False),
    "bf16": dict(amp="bf16", channels_last=False),
    "channels_last": dict(amp=None, channels_last=True),
    "bf16+channels_last": dict(amp="bf16", channels_last=True),
}
GENOTYPES = {"att_darts": ROOT / "genotypes" / "att_darts.geno",
             "darts_v2": ROOT / "genotypes" / "darts_v2.geno"}
EPOCHS, IMAGES_PER_EPOCH = 600, 50_000
GRAPH_WARMUP = 4  # CapturedStep's 3 eager warm-up steps, then the step that captures


def benchmark(genotype_path: Path, path: str, mode: str, args, device: torch.device) -> dict:
    settings = MODES[mode]
    config = train.TrainConfig(batch_size=args.batch_size, channels=args.channels,
                               layers=args.layers, grouped=path == "grouped", **settings)
    genotype = parse_file(genotype_path).genotype()
    torch.manual_seed(0)
    model = train.build_model(genotype, model_config(
        config, data.parse_spec("cifar10"), num_classes=10, input_size=32))
    parameters = count_parameters(model, auxiliary=False)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    model.drop_path_prob = config.drop_path_prob
    compile_seconds = None
    if args.compile:
        compiled = optional("attdarts.networks.compiled", "--compile")
        started = time.perf_counter()
        model = compiled.compile_cells(model, backend=args.compile_backend)
        compile_seconds = time.perf_counter() - started
    optimizer = train.make_optimizer(model, config)
    train_step = TrainStep(model, optimizer, config, graphs=args.graphs)
    warmup = max(args.warmup, GRAPH_WARMUP) if train_step.captured.enabled else args.warmup
    pool = data.synthetic_dataset(train=True, size=4 * args.batch_size)
    loader = data.DeviceLoader(pool.images, pool.labels, batch_size=args.batch_size, device=device,
                               augment=True, cutout=config.cutout, mean=pool.mean, std=pool.std,
                               channels_last=config.channels_last)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def step():
        train_step(*next(stream))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_seconds = []
    for _ in range(warmup):
        started = time.perf_counter()
        step()
        synchronize(device)
        warmup_seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.steps
    images_per_s = args.batch_size / seconds
    # counting runs the step under a dispatch mode, which torch.compile refuses
    operations = count_operations(step) if args.count and not args.compile else None
    captured = train_step.captured.enabled
    return {
        "genotype": genotype.name,
        "variant": variant_label(path, args),
        "path": path,
        "graphs": captured,
        "graphs_requested": args.graphs,
        "compile": args.compile,
        "mode": mode,
        "operations_per_step": operations,
        "parameters": parameters,
        "ms_per_step": 1000 * seconds,
        "images_per_s": images_per_s,
        "peak_memory_mib": peak_memory_mib(device),
        "hours_600_epochs": EPOCHS * IMAGES_PER_EPOCH / images_per_s / 3600,
        "first_step_seconds": warmup_seconds[0] if warmup_seconds else None,
        "capture_step_seconds": warmup_seconds[-1] if captured and warmup_seconds else None,
        "compile_call_seconds": compile_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--channels", type=int, default=36)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--genotypes", default=",".join(GENOTYPES),
                        help=f"comma-separated, from {', '.join(GENOTYPES)} or .geno paths")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--paths", default="plain,grouped",
                        help="comma-separated: plain, grouped or both")
    parser.add_argument("--graphs", action="store_true", help="replay each step as a CUDA graph")
    parser.add_argument("--compile", action="store_true", help="compile the cells (torch.compile)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for --compile [inductor]")
    parser.add_argument("--no-count", dest="count", action="store_false",
                        help="skip the extra step that counts tensor operations")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (torch.set_num_threads)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths_run = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths_run or any(p not in ("plain", "grouped") for p in paths_run):
        parser.error("--paths takes plain, grouped or both")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1, --warmup at least 0")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    device = torch.device(args.device)
    paths = [GENOTYPES.get(name.strip(), Path(name.strip())) for name in args.genotypes.split(",")]

    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch_size}, "
          f"C={args.channels}, L={args.layers}, auxiliary, drop path 0.2; "
          f"{args.warmup} warmup + {args.steps} timed steps")
    if args.graphs and device.type != "cuda":
        print("graphs: no CUDA here, so the same step runs eagerly (the CPU fallback)")
    header = (f"{'genotype':<12} {'variant':<22} {'mode':<20} {'weights':>10} {'ms/step':>9} "
              f"{'img/s':>9} {'peak MiB':>9} {'ops/step':>9} {'h/600 ep':>9}")
    print(header)
    print("-" * len(header))
    results = []
    with runtime.determinism(False, device):  # cudnn.benchmark on, as in training
        for genotype_path, mode, path in itertools.product(paths, modes, paths_run):
            label = f"{genotype_path.stem:<12} {variant_label(path, args):<22} {mode:<20}"
            try:
                row = benchmark(genotype_path, path, mode, args, device)
            except ImportError as error:  # an optional module that is not there
                print(f"{label} not available ({error})", flush=True)
                results.append({"genotype": genotype_path.stem, "variant": variant_label(path, args),
                                "mode": mode, "not_available": str(error)})
                continue
            except Exception as error:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{label} failed: {type(error).__name__}: {error}".splitlines()[0], flush=True)
                results.append({"genotype": genotype_path.stem, "variant": variant_label(path, args),
                                "mode": mode, "error": f"{type(error).__name__}: {error}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            results.append(row)
            operations = row["operations_per_step"]
            capture = ("" if row["capture_step_seconds"] is None
                       else f"  (capture step {row['capture_step_seconds']:.1f} s)")
            print(f"{row['genotype']:<12} {row['variant']:<22} {mode:<20} {row['parameters']:>10,} "
                  f"{row['ms_per_step']:>9.1f} {row['images_per_s']:>9.1f} "
                  f"{row['peak_memory_mib']:>9.0f} "
                  f"{'-' if operations is None else format(operations, ','):>9} "
                  f"{row['hours_600_epochs']:>9.1f}{capture}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "kind": "train",
                                         "torch": torch.__version__, "batch_size": args.batch_size,
                                         "steps": args.steps, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
