"""The training recipe: `TrainConfig`, whose defaults are `recipes.TRAIN["cifar"]` (DARTS, Sec. 3.2;
Att-DARTS, Sec. IV-B) and whose `recipe("imagenet")` is `recipes.TRAIN["imagenet"]`, and the errors
a run raises."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from attdarts import recipes
from attdarts.networks.cell import DROP_PATH_RULES
from attdarts.runs import data

CHECKPOINT_KIND = "attdarts-train"

_CIFAR = recipes.TRAIN["cifar"]


class TrainError(Exception):
    """A run that cannot go on (diverged) or cannot be resumed; the message says why."""


class ResumeError(TrainError):
    """A request that cannot start or resume a run as asked (the caller's mistake, not the run's):
    two directories for one run, a run directory that already holds a run, a changed setting."""


class SettingChanged(ResumeError):
    """`--resume` with a setting that differs from the run's (`option` names it)."""

    def __init__(self, field: str, stored: Any) -> None:
        self.option = "--" + field.replace("_", "-")
        super().__init__(f"{self.option} cannot change when resuming (the run used {stored!r}); "
                         "start a new run to change it")


# ---------------------------------------------------------------------------------------------
# Configuration


class TrainConfig(BaseModel):
    """The training recipe. Defaults are the paper's CIFAR settings (`recipes.TRAIN["cifar"]`);
    `TrainConfig.recipe` picks DARTS's ImageNet settings for `imagenet`."""

    # strict: a bool or a fraction where a count belongs, a number where a flag belongs, are
    # refused as the command line refuses them (also from --config files and the Python API)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    dataset: str = _CIFAR["dataset"]
    data_dir: str | None = _CIFAR["data_dir"]
    epochs: int = Field(_CIFAR["epochs"], ge=1)
    batch_size: int = _CIFAR["batch_size"]
    channels: int = Field(_CIFAR["channels"], ge=1, le=recipes.MAX_CHANNELS)
    layers: int = Field(_CIFAR["layers"], ge=recipes.MIN_LAYERS, le=recipes.MAX_LAYERS)
    auxiliary: bool = _CIFAR["auxiliary"]
    auxiliary_weight: float = Field(_CIFAR["auxiliary_weight"], ge=0)
    lr: float = Field(_CIFAR["lr"], gt=0)
    lr_min: float = Field(_CIFAR["lr_min"], ge=0)
    lr_schedule: Literal["cosine", "exponential"] = _CIFAR["lr_schedule"]
    lr_gamma: float = Field(_CIFAR["lr_gamma"], gt=0, le=1)
    momentum: float = Field(_CIFAR["momentum"], ge=0, lt=1)
    weight_decay: float = Field(_CIFAR["weight_decay"], ge=0)
    grad_clip: float | None = Field(_CIFAR["grad_clip"], gt=0)
    label_smoothing: float = Field(_CIFAR["label_smoothing"], ge=0, lt=1)
    cutout: int = Field(_CIFAR["cutout"], ge=0)
    drop_path_prob: float = Field(_CIFAR["drop_path_prob"], ge=0, lt=1)
    # which edges drop path spares (attdarts.network._droppable); DARTS's rule by default
    drop_path_rule: Literal[DROP_PATH_RULES] = _CIFAR["drop_path_rule"]  # type: ignore[valid-type]
    seed: int = Field(_CIFAR["seed"], ge=0, le=recipes.MAX_SEED)
    deterministic: bool = _CIFAR["deterministic"]
    amp: Literal["bf16"] | None = _CIFAR["amp"]
    channels_last: bool = _CIFAR["channels_last"]
    # run each cell's ready edges in groups (attdarts.grouped): the same network and numbers,
    # fewer kernels; False is the plain edge-by-edge path (`attdarts train --plain`)
    grouped: bool = _CIFAR["grouped"]
    # compile each distinct cell (attdarts.networks.compiled); opt-in until a GPU run shows a
    # gain. It changes which drop-path masks are drawn, so a run cannot switch it on resume
    compile_cells: bool = _CIFAR["compile_cells"]
    # replay each training step as one CUDA graph on CUDA (attdarts.runs.graphs); the CPU and
    # False (`attdarts train --no-graphs`) run the same step eagerly
    graphs: bool = _CIFAR["graphs"]
    max_steps_per_epoch: int | None = Field(_CIFAR["max_steps_per_epoch"], ge=1)
    workers: int = Field(_CIFAR["workers"], ge=0)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        """A known spec; a folder's path made absolute, so the run can be scored from anywhere."""
        try:
            spec = data.parse_spec(value)
        except data.DataError as error:
            raise ValueError(str(error)) from None
        if spec.kind == "folder":
            spec = data.DatasetSpec("folder", _absolute(spec.path))
        return str(spec)

    @field_validator("batch_size")
    @classmethod
    def _two_images(cls, value: int) -> int:
        return recipes.checked_batch_size(value)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)

    @classmethod
    def recipe(cls, dataset: str = "cifar10", **overrides: Any) -> "TrainConfig":
        """The paper's recipe for `dataset`, with `overrides` (None values are ignored)."""
        settings: dict[str, Any] = {"dataset": dataset}
        if isinstance(dataset, str) and dataset.strip().lower() == "imagenet":
            settings.update(IMAGENET_RECIPE)
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**settings)

    @property
    def spec(self) -> data.DatasetSpec:
        return data.parse_spec(self.dataset)

    def with_data_dir(self) -> "TrainConfig":
        """This config with the dataset root it will read spelled out (absolute): CIFAR and
        ImageNet default to ./data and ./data/imagenet of the working directory."""
        if self.data_dir is not None or self.spec.kind not in ("cifar10", "cifar100", "imagenet"):
            return self
        return self.model_copy(update={"data_dir": _absolute(data.default_data_dir(self.spec))})


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# DARTS's ImageNet settings (those that differ from CIFAR's); `TrainConfig.recipe` applies them
IMAGENET_RECIPE: dict[str, Any] = {
    key: value for key, value in recipes.TRAIN["imagenet"].items()
    if key != "dataset" and value != _CIFAR[key]
}

# Settings that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_OVERRIDES = frozenset({"data_dir", "workers", "grouped", "graphs"})

