"""Training a discrete network (the Att-DARTS evaluation protocol) and evaluating checkpoints.

`config` holds the recipe, `steps` one step/epoch/evaluation, `loop` the run, `resume` the one
check of a run directory before resuming, `entry` the start-or-resume `launch`, `evaluate` the scoring of a checkpoint. Callers import
`attdarts.runs.train` and do not depend on that split.
"""

from attdarts.runs.train.config import (
    CHECKPOINT_KIND,
    RESUMABLE_OVERRIDES,
    ResumeError,
    SettingChanged,
    TrainConfig,
    TrainError,
)
from attdarts.runs.train.entry import default_run_dir, launch, resume_state
from attdarts.runs.train.evaluate import build_model, evaluate_checkpoint
from attdarts.runs.train.loop import TrainResult, run_training
from attdarts.runs.train.resume import ResumePoint, open_resume
from attdarts.runs.train.steps import (
    evaluate,
    make_optimizer,
    make_scheduler,
    train_epoch,
    train_step,
)

__all__ = [
    "CHECKPOINT_KIND",
    "RESUMABLE_OVERRIDES",
    "ResumeError",
    "ResumePoint",
    "SettingChanged",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "build_model",
    "default_run_dir",
    "evaluate",
    "evaluate_checkpoint",
    "launch",
    "make_optimizer",
    "make_scheduler",
    "open_resume",
    "resume_state",
    "run_training",
    "train_epoch",
    "train_step",
]
