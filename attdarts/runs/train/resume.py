"""The one resume: `run_dir/last.pt` checked against its run directory before anything is written.

A checkpoint resumes only the run it belongs to: a training checkpoint, of the genotype asked for
and of the run's `genotype.geno`, with the settings of its `config.json` and the history of its
`metrics.jsonl`; only the settings that do not change the result (`RESUMABLE_OVERRIDES`) may be
given anew.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attdarts.language import ir
from attdarts.runs import checkpoints
from attdarts.runs.checkpoints import CheckpointError
from attdarts.runs.train.config import (
    CHECKPOINT_KIND,
    RESUMABLE_OVERRIDES,
    SettingChanged,
    TrainConfig,
)


def same_cells(a: ir.Genotype, b: ir.Genotype) -> bool:
    return a.normal == b.normal and a.reduce == b.reduce


def load_run_checkpoint(path: Path, genotype: ir.Genotype | None = None) -> dict[str, Any]:
    """A training checkpoint; refused if it was written for a different genotype."""
    state = checkpoints.load_run_state(path, CHECKPOINT_KIND)
    if genotype is not None:
        stored = stored_genotype(state, path)
        if not same_cells(stored, genotype):
            raise CheckpointError(
                f"{path}: the checkpoint was written for genotype '{stored.name}', whose cells "
                f"differ from those of '{genotype.name}'; resume with the genotype it was trained on"
            )
    return state


def stored_genotype(state: dict[str, Any], path: Path | str = "checkpoint") -> ir.Genotype:
    from attdarts.language.errors import DslError
    from attdarts.language.transform import parse_text

    try:
        return parse_text(state["genotype_text"]).genotype(state.get("genotype_name"))
    except (DslError, KeyError) as error:
        raise CheckpointError(f"{path}: the genotype stored in the checkpoint is unreadable ({error})") from None


@dataclass(frozen=True)
class ResumePoint:
    """A run directory checked for resuming: its last.pt, and the config and genotype to use."""

    run_dir: Path
    state: dict[str, Any]
    config: TrainConfig
    genotype: ir.Genotype


def open_resume(run_dir: str | os.PathLike, genotype: ir.Genotype | None = None,
                overrides: dict[str, Any] | None = None) -> ResumePoint:
    """Check that `run_dir/last.pt` belongs to the run in `run_dir` before anything is written.

    The checkpoint must be a training checkpoint, of `genotype` (when given) and of the run's
    `genotype.geno`, with the recipe of its `config.json`, and its history must agree with
    `metrics.jsonl` (a copy of another run's last.pt, even of the same genotype and recipe, has
    other numbers). `overrides` may change only the settings that do not change the result
    (`RESUMABLE_OVERRIDES`); another changed setting raises `SettingChanged`.
    """
    run_dir = Path(run_dir)
    path = run_dir / "last.pt"
    state = load_run_checkpoint(path, genotype)
    stored = stored_genotype(state, path)
    try:
        config = TrainConfig(**state["config"])
    except Exception as error:  # pydantic's ValidationError, a missing key
        raise CheckpointError(f"{path}: the stored settings are unreadable ({error})") from None

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} does not belong to the run in {run_dir}: {reason}; "
                               "nothing was changed (resume from the run's own last.pt)")

    geno_path = run_dir / "genotype.geno"
    try:
        run_genotype = stored_genotype({"genotype_text": geno_path.read_text(encoding="utf-8"),
                                        "genotype_name": state.get("genotype_name")}, geno_path)
    except (OSError, UnicodeDecodeError) as error:
        raise refuse(f"cannot read {geno_path.name} ({error.__class__.__name__})") from None
    except CheckpointError:
        raise refuse(f"{geno_path.name} does not hold genotype '{stored.name}'") from None
    if not same_cells(run_genotype, stored):
        raise refuse(f"it was written for genotype '{stored.name}', whose cells differ from "
                     f"those in {geno_path.name}")

    config_path = run_dir / "config.json"
    try:
        recorded = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise refuse(f"cannot read {config_path.name} ({error.__class__.__name__})") from None
    stored_settings = dict(state["config"])  # as written, before validation touches paths
    for field, value in stored_settings.items():
        if field not in RESUMABLE_OVERRIDES and recorded.get(field, value) != value:
            raise refuse(f"its {field} is {value!r}, {config_path.name} says {recorded[field]!r}")

    history = list(state.get("history", []))
    metrics_path = run_dir / "metrics.jsonl"
    try:
        lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as error:
        raise refuse(f"cannot read {metrics_path.name} ({error.__class__.__name__})") from None
    # last.pt is written before metrics.jsonl, so the file may lack the checkpoint's last
    # epoch but never holds an epoch the checkpoint lacks
    if len(records) > len(history) or records != history[:len(records)]:
        raise refuse(f"its {len(history)} epochs do not match the {len(records)} recorded "
                     f"in {metrics_path.name}")

    for field, value in (overrides or {}).items():
        if field not in RESUMABLE_OVERRIDES and getattr(config, field) != value:
            raise SettingChanged(field, getattr(config, field))
    config = config.model_copy(update={k: v for k, v in (overrides or {}).items()
                                       if k in RESUMABLE_OVERRIDES})
    return ResumePoint(run_dir, state, TrainConfig(**config.model_dump()), stored)
