"""Pre-emption: SIGTERM or SIGUSR1 stop a run at the next step boundary, with a checkpoint.

Clusters stop jobs with signals: Slurm sends SIGTERM when it pre-empts or cancels a job (then,
after its KillWait, SIGKILL), and `--signal=USR1@120` (or `B:USR1@120` for the batch script) asks
it for SIGUSR1 that long before the wall-time limit; Kubernetes and torchrun's agent send SIGTERM.
While a search or a training runs, both signals only raise a flag. The loop reads it after each
step; a set flag makes the run save its checkpoint (search: checkpoint.pt, training: last.pt,
both mid-epoch) and raise `Preempted`, and the command exits with `EXIT_STATUS` after one line
that says how to continue. `--resume` then gives the same results as a run never stopped.

Under torchrun every rank must stop at the same step (they would otherwise wait for each other
in the next collective): the flags are combined by an all-reduce (maximum) at every step
boundary, over gloo, so a signal to any one rank stops them all. That is one small CPU collective
per step, which the data-parallel step's own all-reduce dwarfs.

The handlers are installed only while the run's loop runs, and the previous ones are restored
afterwards (outside the main thread, where Python cannot install handlers, nothing is watched).
"""

from __future__ import annotations

import io
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from attdarts.runs import runtime

log = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h, "temporary failure; the user is invited to retry": the checkpoint is
# written and `--resume` continues. A job script can requeue on it, e.g. under Slurm:
#   attdarts train ... ; [ $? -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"
EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A run stopped by a signal after saving its checkpoint; `--resume run_dir` continues it."""

    def __init__(self, run_dir: Path | None, signal_number: int, epoch: int, step: int) -> None:
        self.run_dir = run_dir
        self.signal_name = signal.Signals(signal_number).name
        self.epoch = epoch  # 1-based epoch that was running
        self.step = step  # steps of that epoch completed and saved
        where = f" (checkpoint in {run_dir})" if run_dir is not None else ""
        super().__init__(f"stopped by {self.signal_name} in epoch {epoch} after step {step}"
                         f"{where}")

    def resume_line(self, command: str, run_dir: Path | None = None) -> str:
        """The one line a command prints: what happened and how to continue."""
        target = run_dir if run_dir is not None else self.run_dir
        return (f"attdarts: {self} ; continue with: attdarts {command} --resume {target} "
                f"(exit status {EXIT_STATUS})")


class Watch:
    """The flag that the signals raise, read by the loop at step boundaries."""

    def __init__(self, process: runtime.Process, group=None) -> None:
        self.process = process
        self.group = group  # a gloo group for the flag under torchrun (None: the default group)
        self.signal_number = 0

    def _raise_flag(self, signal_number: int, frame) -> None:
        self.signal_number = signal_number  # nothing else: a handler must not log or allocate

    def stop_requested(self) -> bool:
        """Whether the run stops now: a signal arrived here or, under torchrun, at any rank.
        Every rank must call this at the same step boundaries."""
        if self.process.world_size > 1:
            flag = torch.tensor([self.signal_number], dtype=torch.int64)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
            self.signal_number = int(flag.item())
        return self.signal_number != 0

    def stopped(self, run_dir: Path | None, epoch: int, step: int) -> Preempted:
        """The exception that ends the run, once its checkpoint is saved (under torchrun, once
        rank 0 has saved it: a rank that left early would make torchrun stop the others)."""
        if self.process.world_size > 1:
            torch.distributed.barrier(group=self.group)
        return Preempted(run_dir, self.signal_number, epoch, step)


class _NotWatched(Watch):
    """What a loop holds outside `watch`: never asks to stop (and costs nothing)."""

    def __init__(self) -> None:
        super().__init__(runtime.Process())

    def stop_requested(self) -> bool:
        return False


NOT_WATCHED = _NotWatched()


@contextmanager
def watch(process: runtime.Process) -> Iterator[Watch]:
    """SIGTERM and SIGUSR1 raise the returned flag while the block runs; the previous handlers
    are restored afterwards."""
    group = None
    if process.world_size > 1 and torch.distributed.get_backend() != "gloo":
        group = torch.distributed.new_group(backend="gloo")  # the flag is a CPU tensor
    flag = Watch(process, group)
    if threading.current_thread() is not threading.main_thread():
        log.debug("not in the main thread: SIGTERM / SIGUSR1 are not watched")
        yield flag
        return
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    for number in SIGNALS:
        signal.signal(number, flag._raise_flag)
    try:
        yield flag
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# ---------------------------------------------------------------------------------------------
# Training's mid-epoch checkpoint (the search keeps its own: SearchRun.save with `step`)


class StopAtStep(Exception):
    """Raised from training's per-step callback: stop after `step` steps of the epoch, whose
    running sums (loss x samples, correct, samples) are `totals`."""

    def __init__(self, step: int, totals: torch.Tensor) -> None:
        super().__init__(f"stop after step {step}")
        self.step = step
        self.totals = totals


def partial_epoch(stop: StopAtStep, process: runtime.Process, seconds: float,
                  group=None) -> dict:
    """What training's last.pt records of an epoch stopped mid-way: the steps done, the running
    sums over every rank, each rank's random state and the seconds spent. Every rank calls it."""
    totals = runtime.all_reduce(stop.totals.detach().to(torch.float64), process).cpu()
    # each rank's state as bytes: all_gather_object cannot carry the state's tensors
    buffer = io.BytesIO()
    torch.save(runtime.rng_state(), buffer)
    states = [buffer.getvalue()]
    if process.world_size > 1:
        states = [None] * process.world_size
        torch.distributed.all_gather_object(states, buffer.getvalue(), group=group)
    return {"step": stop.step, "totals": totals, "rng": states, "seconds": seconds}


def partial_totals(partial: dict, process: runtime.Process, device: torch.device) -> torch.Tensor:
    """The stopped epoch's sums, counted once: rank 0 adds them, the others add zeros."""
    totals = partial["totals"].to(device, torch.float64)
    return totals if process.main else torch.zeros_like(totals)


class Resumed:
    """The training loader of an epoch resumed mid-way: it draws the first `step` batches as the
    stopped run did (so the shuffle and augmentation streams advance alike), drops them, puts
    back the random state saved at the stop (drop path draws from it) and yields the rest."""

    def __init__(self, loader, partial: dict, process: runtime.Process) -> None:
        self.loader = loader
        self.skip = int(partial["step"])
        states = partial["rng"]
        self.state = states[process.rank] if process.rank < len(states) else None
        if self.state is None or len(states) != process.world_size:
            log.warning("the checkpoint was written by %d processes, this run has %d: the "
                        "stopped epoch's random draws are not restored", len(states),
                        process.world_size)
            self.state = None

    def __len__(self) -> int:
        return len(self.loader) - self.skip

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(self.skip):
            next(batches)
        if self.state is not None:
            runtime.set_rng_state(torch.load(io.BytesIO(self.state), weights_only=True))
        yield from batches
