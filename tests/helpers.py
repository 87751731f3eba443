"""Small data writers shared by several test modules (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


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
