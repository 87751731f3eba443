"""Scoring a training checkpoint on the test split (`attdarts test`): the checkpoint carries the
genotype's text and the network settings, so the network is rebuilt from it alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attdarts.language import ir
from attdarts.runs import data, runtime
from attdarts.runs.checkpoints import CheckpointError
from attdarts.runs.train.config import TrainConfig
from attdarts.runs.train.resume import load_run_checkpoint, stored_genotype
from attdarts.runs.train.steps import evaluate


def build_model(genotype: ir.Genotype, settings: dict[str, Any]) -> nn.Module:
    from attdarts.networks.network import compile_network

    return compile_network(genotype, **settings)


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a training checkpoint on the test split.

    The checkpoint carries the genotype's text and the network settings, so the network is
    rebuilt from it alone; weights saved from a DDP wrapper (`module.` prefix) load too.
    """
    path = Path(path)
    state = load_run_checkpoint(path)
    genotype = stored_genotype(state, path)
    stored = TrainConfig(**state["config"])
    spec = data.parse_spec(dataset) if dataset is not None else stored.spec
    device = torch.device(device or runtime.default_device())
    try:
        loader, info = data.make_loader(
            spec, data_dir if data_dir is not None else stored.data_dir, train=False,
            batch_size=batch_size or stored.batch_size, device=device,
            workers=stored.workers if workers is None else workers)
    except data.DataError as error:
        if spec.kind == "synthetic":
            raise
        # the run's data moved or is on another machine: name the option that points at it
        option = ("--dataset folder:PATH" if spec.kind == "folder" else
                  "--data-dir DIR" if data_dir is None else "another --data-dir")
        raise data.DataError(f"{str(error).rstrip('.')}. The run at {path.parent} trained on "
                             f"{spec}: pass {option} to score it on the data where it is now"
                             ) from None
    settings = dict(state["model_config"])
    if info.num_classes != settings["num_classes"]:
        raise data.DataError(f"the checkpoint's network has {settings['num_classes']} classes, "
                             f"the dataset {info.num_classes}")
    model = build_model(genotype, settings)
    try:
        model.load_state_dict(runtime.strip_module_prefix(state["model"]))
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit the stored network ({str(error).splitlines()[0]})") from None
    model.to(device)
    values = evaluate(model, loader).tolist()
    count = max(values[3], 1.0)
    return {
        "checkpoint": str(path),
        "genotype": genotype.name,
        "dataset": str(spec),
        "synthetic": info.synthetic,
        "epoch": int(state["epoch"]),
        "test_images": int(values[3]),
        "test_loss": values[0] / count,
        "test_top1": 100.0 * values[1] / count,
        "test_top5": 100.0 * values[2] / count,
    }
