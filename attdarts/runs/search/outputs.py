"""What a search writes: the run directory's files, derived from the run's history.

The checkpoint is the source of truth: it holds the per-epoch history (genotypes, weights
records, metrics), and every other file is rewritten atomically from it after each epoch, so a
run killed at any instant resumes to byte-identical files. Genotypes stay `ir.Genotype` objects
in memory; they become text here, through the printer's checked round trip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attdarts.language import decisiveness, ir, kinds
from attdarts.language.printer import cell_lines, format_checked, format_space
from attdarts.networks.derive import derive_genotype
from attdarts.networks.supernet import Supernet
from attdarts import records
from attdarts.runs import checkpoints
from attdarts.runs.search.config import (
    CHECKPOINT, CONFIG, FINAL_GENOTYPE, METRICS_LOG, SPACE, SYNTHETIC_NOTE, WEIGHTS_LOG,
    SearchConfig, SearchError, SearchResult,
)


def dump_json(value: object) -> str:
    """One JSON line as the logs write it."""
    return json.dumps(value, separators=(", ", ": "))


def _rows(values: Tensor) -> list:
    """A tensor as rows (the last axis), as weights.jsonl writes every kind."""
    return values.reshape(-1, values.shape[-1]).tolist()


def _short(values: Tensor) -> list:
    """float32 tensor -> nested lists of the shortest decimals that identify each float32."""
    array = values.detach().to("cpu", torch.float32).numpy()
    return [[float(str(np.float32(v))) for v in row] for row in array]


def prepare_run_dir(config: SearchConfig, run_dir: Path, space: ir.Space,
                    restart: bool = False) -> None:
    """Write config.json and space.geno; `restart` accepts the run's own config.json (a run
    killed in its first epoch, started again by `resume_search`)."""
    if (run_dir / CHECKPOINT).exists() or ((run_dir / CONFIG).exists() and not restart):
        raise SearchError(
            f"'{run_dir}' already holds a search; continue it with --resume {run_dir} "
            "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.atomic_write_text(run_dir / CONFIG, json.dumps(
        config.model_dump(mode="json"), indent=2) + "\n")
    checkpoints.atomic_write_text(run_dir / SPACE, format_space(space))


def epoch_genotype(model: Supernet, space: ir.Space, config: SearchConfig, epoch: int,
                   synthetic: bool, plan=None) -> ir.Genotype:
    """The genotype derived after `epoch`, its meta naming the space, epoch (of `plan`'s
    epochs, `stages.Plan`; the config's without one), stage (a space with stages), seed and
    data."""
    epochs = config.epochs if plan is None else plan.epochs
    meta = {"space": space.name, "epoch": f"{epoch}/{epochs}"}
    if plan is not None and plan.staged:
        meta["stage"] = f"{plan.at(epoch - 1).number + 1}/{len(plan.stages)}"
    meta.update({"seed": str(config.seed), "dataset": config.dataset})
    if synthetic:
        meta["dataset"] += f" ({SYNTHETIC_NOTE})"
        meta["synthetic"] = SYNTHETIC_NOTE
    return derive_genotype(model, space, name=f"{space.name}_seed{config.seed}", meta=meta)


STOPPED_EARLY = "stopped_early"  # genotype meta, metrics and summary key of DARTS+'s stop


def with_meta(genotype: ir.Genotype, key: str, value: str) -> ir.Genotype:
    """`genotype` with one more meta entry (`key = "value"`)."""
    return genotype.model_copy(update={"meta": (*genotype.meta, ir.Meta(key=key, value=value))})


def count_skips(cell: ir.Cell) -> int:
    """How many edges of `cell` are skip_connect (DARTS+'s criterion)."""
    return sum(edge.operation.name == "skip_connect" for node in cell.nodes for edge in node.edges)


def genotype_text(genotype: ir.Genotype) -> str:
    """The genotype as written (refused unless it prints back to the same IR)."""
    return format_checked(genotype, what="the derived genotype")


def weights_record(model: Supernet, epoch: int, synthetic: bool) -> str:
    """One line of weights.jsonl: the softmaxed architecture weights of each cell kind, every
    kind the supernet has (alpha / beta / gamma, and e.g. edge weights), in its order.

    Each kind as the forward uses it (`Supernet.normalised_architecture`): alpha / beta / gamma
    softmaxed over each row; edge weights (edge normalisation) softmaxed over the edges entering
    each node, written as one row in edge order. In a stage that has dropped candidates (a space
    with stages), "kept" gives the stage's masks, {cell: {kind: rows of 1 (searched) and 0
    (dropped)}}, in the weights' shape: a dropped candidate weighs 0, and `attdarts derive` never
    chooses it.
    """
    record: dict = {"epoch": epoch}
    if synthetic:
        record["synthetic"] = True
    normalised = model.normalised_architecture()
    for cell in ir.CELL_KINDS:
        record[cell] = {kind: _short(tensor.float().reshape(-1, tensor.shape[-1]))
                        for kind, tensor in normalised[cell].items()}
    progressive = model.methods.progressive
    masks = {} if progressive is None else progressive.masks
    if any(not bool(mask.all()) for by_kind in masks.values() for mask in by_kind.values()):
        record["kept"] = {cell: {kind: _rows(masks[cell][kind].int())
                                 for kind in normalised[cell] if kind in masks.get(cell, {})}
                          for cell in ir.CELL_KINDS}
    columns = model.columns
    record["edges"] = list(model.edge_names)
    record["operations"] = columns[kinds.OPERATION]
    attentions = columns.get(kinds.ATTENTION, columns.get(kinds.OUTPUT))
    if attentions is not None:
        record["attentions"] = attentions
    return dump_json(record)


def decisiveness_metrics(space: ir.Space, genotypes: Sequence[ir.Genotype],
                         weights_line: str) -> tuple[dict, str | None]:
    """The last epoch's decisiveness (`language.decisiveness`) from its genotype and its
    weights.jsonl line: the keys for its metrics record and the log line. A genotype that does not fit the
    weights (a derivation that is not the space's) gives ({}, None): the search goes on."""
    record = json.loads(weights_line)
    cells = {kind: record[kind] for kind in ir.CELL_KINDS if kind in record}
    try:
        result = decisiveness.decide(space, genotypes[-1], cells)
    except decisiveness.DecisivenessError:
        return {}, None
    changed = decisiveness.last_change(genotypes)
    return decisiveness.metrics_record(result, changed), decisiveness.log_line(result, changed)


def write_outputs(run_dir: Path, history: Mapping[str, list], texts: list[str]) -> None:
    """Rewrite every derived file from the history (atomic, idempotent). `texts` caches the
    genotype texts of earlier epochs; it is extended here."""
    genotypes = history["genotypes"]
    texts.extend(genotype_text(genotype) for genotype in genotypes[len(texts):])
    for index, text in enumerate(texts):
        path = run_dir / f"genotype-epoch{index + 1:03d}.geno"
        if not path.is_file() or path.read_text() != text:
            checkpoints.atomic_write_text(path, text)
    if texts:
        checkpoints.atomic_write_text(run_dir / FINAL_GENOTYPE, texts[-1])
    checkpoints.atomic_write_text(run_dir / WEIGHTS_LOG,
                                 "".join(line + "\n" for line in history["weights"]))
    checkpoints.atomic_write_text(run_dir / METRICS_LOG,
                                 "".join(line + "\n" for line in history["metrics"]))


def summarise(results: Sequence[SearchResult], out_dir: Path) -> dict:
    """Which genotype each seed produced; seeds with the same cells are grouped. Accuracies are
    in percent (`attdarts.records`)."""
    groups: dict[tuple, list[int]] = {}
    rows = []
    for result in results:
        seed = result.seed
        cells = (result.genotype.normal, result.genotype.reduce)
        groups.setdefault(cells, []).append(seed)
        rows.append({
            "seed": seed,
            "genotype": str((result.run_dir / FINAL_GENOTYPE).relative_to(out_dir)),
            "epochs": result.epochs,
            "val_accuracy": result.metrics.get("val_accuracy"),
            "cells": {kind: "; ".join(cell_lines(getattr(result.genotype, kind)))
                      for kind in ir.CELL_KINDS},
        })
        if STOPPED_EARLY in result.metrics:
            rows[-1][STOPPED_EARLY] = result.metrics[STOPPED_EARLY]
    for row in rows:
        for cells, seeds in groups.items():
            if row["seed"] in seeds:
                row["same_cells_as"] = [s for s in seeds if s != row["seed"]]
    return {records.UNIT_KEY: records.PERCENT, "seeds": rows}
