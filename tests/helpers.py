"""Small data writers and readers shared by several test modules (tests/ is on pytest's
pythonpath)."""

from __future__ import annotations

import contextlib
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


# a search run directory written by hand (`attdarts render --weights`, `consensus`, `report`):
# two intermediate nodes, edges n0<-c_k2, n0<-c_k1, n1<-c_k2, n1<-c_k1, n1<-n0
HAND_SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""
HAND_ALPHA = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.15, 0.25], [0.1, 0.6, 0.2, 0.1],
              [0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.45, 0.25]]
HAND_BETA = [[0.55, 0.45], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1], [0.48, 0.52]]
HAND_CELLS = """\
    normal {
        n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
    reduce {
        n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
"""


def write_search_run(run: Path, genotypes: list[str], weights: list[dict] | None = None, *,
                     seed: int = 0, metrics: list[dict] | None = None) -> Path:
    """A search run directory: config.json, space.geno (HAND_SPACE), genotype-epochNNN.geno and
    genotype.geno from the cell texts `genotypes` (one per epoch), weights.jsonl (`weights`, one
    {"alpha": rows, "beta": rows} per epoch, the same for both cells; default HAND_ALPHA /
    HAND_BETA every epoch) and metrics.jsonl."""
    run.mkdir(parents=True, exist_ok=True)
    epochs = len(genotypes)
    weights = weights or [{"alpha": HAND_ALPHA, "beta": HAND_BETA}] * epochs
    (run / "config.json").write_text(json.dumps({
        "space_file": "tiny.geno", "dataset": "cifar10", "epochs": epochs, "seed": seed,
        "channels": 4, "layers": 3}))
    (run / "space.geno").write_text(HAND_SPACE)
    for epoch, cells in enumerate(genotypes, 1):
        text = (f"genotype tiny_seed{seed} {{\n    epoch = \"{epoch}/{epochs}\"\n"
                f"    seed = \"{seed}\"\n\n{cells}}}\n")
        (run / f"genotype-epoch{epoch:03d}.geno").write_text(text)
        (run / "genotype.geno").write_text(text)
    lines = []
    for epoch, cell in enumerate(weights, 1):
        lines.append(json.dumps({"epoch": epoch, "normal": cell, "reduce": cell,
                                 "edges": ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2", "n1<-c_k1",
                                           "n1<-n0"],
                                 "operations": ["none", "max_pool_3x3", "skip_connect",
                                                "sep_conv_3x3"],
                                 "attentions": ["identity", "se"]}))
    (run / "weights.jsonl").write_text("\n".join(lines) + "\n")
    metrics = metrics or [{"epoch": epoch, "train_loss": 2.3 - 0.1 * epoch,
                           "train_accuracy": 0.1 + 0.05 * epoch, "val_loss": 2.35 - 0.1 * epoch,
                           "val_accuracy": 0.1 + 0.04 * epoch, "lr": 0.025}
                          for epoch in range(1, epochs + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


@contextlib.contextmanager
def in_float64():
    """Supernets and images in float64: the default dtype, and the loaders' normalised images
    cast (the same cast for a reference run and the run compared with it)."""
    import pytest
    import torch

    from attdarts.runs.data import loaders

    original = loaders.normalise
    saved = torch.get_default_dtype()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loaders, "normalise", lambda *args: original(*args).double())
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(saved)


def assert_same_state(expected, actual, *, rtol: float, atol: float, where: str = "") -> None:
    """Nested checkpoint values equal: tensors within the tolerance, everything else exactly."""
    import torch

    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape, where
        if expected.is_floating_point():
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(actual, expected), f"{where}: {actual!r} vs {expected!r}"
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_same_state(expected[key], actual[key], rtol=rtol, atol=atol,
                              where=f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (e, a) in enumerate(zip(expected, actual)):
            assert_same_state(e, a, rtol=rtol, atol=atol, where=f"{where}[{index}]")
    else:
        assert actual == expected, where


class Interrupted(Exception):
    """A run the test kills between two steps (`interrupt_at`)."""


def interrupt_at(monkeypatch, owner, name: str, call: int):
    """Make `owner.name` (a method, e.g. `Bilevel.step`) raise `Interrupted` at its `call`-th
    call, as a run killed there; returns the function that puts the method back."""
    original, calls = getattr(owner, name), []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Interrupted
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return lambda: monkeypatch.setattr(owner, name, original)
