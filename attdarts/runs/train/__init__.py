"""Training a discrete network (the Att-DARTS evaluation protocol) and evaluating checkpoints.

The public names live in `loop` today; the package re-exports them so that callers import
`attdarts.runs.train` and do not depend on how the package is split into modules.
"""

from attdarts.runs.train.loop import (
    CHECKPOINT_KIND,
    RESUMABLE_OVERRIDES,
    TrainConfig,
    TrainResult,
    evaluate,
    evaluate_checkpoint,
    make_optimizer,
    make_scheduler,
    run_training,
    train_epoch,
    train_step,
)

__all__ = [
    "CHECKPOINT_KIND",
    "RESUMABLE_OVERRIDES",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "evaluate_checkpoint",
    "make_optimizer",
    "make_scheduler",
    "run_training",
    "train_epoch",
    "train_step",
]
