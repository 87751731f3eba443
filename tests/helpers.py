"""Small data writers and readers shared by several test modules (tests/ is on pytest's
pythonpath)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

# a two-node attention space: small enough for the multi-process, signal and config-file runs
TINY_SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""
TIMING_KEYS = ("seconds", "images_per_s")  # the only metrics two equal runs may differ in


def metrics_without_timings(run_dir: Path) -> list[dict]:
    """A run directory's metrics.jsonl records without their wall-clock fields."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def write_cifar10(root: Path, per_file: int = 8) -> Path:
    """Tiny CIFAR-10 in the real on-disk format (pickled dicts with bytes keys)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(),
                 b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_file)],
                 b"filenames": [b"x.png"] * per_file}
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [str(i).encode() for i in range(10)]}, file)
    return root
