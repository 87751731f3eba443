"""Pre-emption: SIGTERM, SIGUSR1 or Ctrl-C stop a run at the next step boundary, with a checkpoint.

Clusters stop jobs with signals: Slurm sends SIGTERM to every process of the job when it
pre-empts or cancels it (then, after its KillWait, 30 s by default, SIGKILL), and
`--signal=USR1@120` (or `B:USR1@120` for the batch script) asks it for SIGUSR1 that long before
the wall-time limit; Kubernetes and torchrun's agent send SIGTERM. A terminal sends SIGINT
(Ctrl-C) to its foreground process group. While a search or a training runs, the three signals
only raise a flag. The loop reads it before an epoch's first step and after every step; a set
flag makes the run save its checkpoint (search: checkpoint.pt, training: last.pt, both mid-epoch)
and raise `Preempted`, and the command exits after one line that says how to continue: with
`EXIT_STATUS` (75) after SIGTERM or SIGUSR1, with `INTERRUPT_STATUS` (130, what a shell reports
for Ctrl-C) after SIGINT. `--resume` then gives the same results as a run never stopped.

The first signal decides: later ones (Slurm repeats SIGTERM, an impatient second Ctrl-C) are
recorded and ignored, so a save in progress finishes and the exit status stays that of the
first. The commands watch from their start to the process's exit (`command`): a signal while the
data loads is handled at the first step boundary, and once a signal came the three are ignored
until the process has exited (a default handler would end it with another status). Checkpoints
are written atomically in any case (`attdarts.files`).

Some stretches hold no work worth waiting for, because the checkpoint on disk is where they began:
compiling the cells (`--compile`) takes minutes at a run's first step (and at training's first
evaluation), and Slurm's SIGKILL follows SIGTERM after 30 s. The loops save the checkpoint first
and run such a stretch inside `Watch.interruptible`: a signal there raises `Interrupted` at once,
and the run ends as pre-empted at the checkpoint it saved.

Under torchrun every rank must stop at the same step (they would otherwise wait for each other
in the next collective): the flags are combined by an all-reduce (maximum) at every step
boundary, over gloo, so a signal to any one rank stops them all. That is one small CPU collective
per step, which the data-parallel step's own all-reduce dwarfs. (`interruptible` waits for the
step there: one rank leaving in the middle of a collective would leave the others waiting.)

The handlers are installed in the main thread only (Python allows no other), and the previous
ones are restored when the outermost watch ends, unless a signal came during a command. Worker
processes of the data loaders ignore the three signals (`ignore_in_worker`): the main process
decides, and a worker killed by the process group's SIGTERM would turn the exit into a loader
error.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import warnings
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
# 128 + SIGINT: what a shell reports for a command ended by Ctrl-C, so that scripts stop too
INTERRUPT_STATUS = 128 + signal.SIGINT
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_status(signal_number: int) -> int:
    """The exit status of a command stopped by `signal_number`."""
    return INTERRUPT_STATUS if signal_number == signal.SIGINT else EXIT_STATUS


class Preempted(Exception):
    """A run stopped by a signal after saving its checkpoint; `--resume run_dir` continues it."""

    def __init__(self, run_dir: Path | None, signal_number: int, epoch: int, step: int) -> None:
        self.run_dir = run_dir
        self.signal_name = signal.Signals(signal_number).name
        self.exit_status = exit_status(signal_number)
        self.epoch = epoch  # 1-based epoch that was running
        self.step = step  # steps of that epoch completed and saved
        where = f" (checkpoint in {run_dir})" if run_dir is not None else ""
        super().__init__(f"stopped by {self.signal_name} in epoch {epoch} after step {step}"
                         f"{where}")

    def resume_line(self, command: str, run_dir: Path | None = None, *,
                    arguments: str | None = None) -> str:
        """The one line a command prints: what happened and how to continue (`attdarts
        COMMAND --resume RUN_DIR`, or `attdarts COMMAND ARGUMENTS` where the run continues by
        running the same command again)."""
        target = run_dir if run_dir is not None else self.run_dir
        how = f"--resume {target}" if arguments is None else arguments
        return (f"attdarts: {self} ; continue with: attdarts {command} {how} "
                f"(exit status {self.exit_status})")


class Interrupted(BaseException):
    """Raised by the signal handler inside `Watch.interruptible`: the stretch is abandoned, and
    the run ends as pre-empted at the checkpoint saved before it. A BaseException, like
    KeyboardInterrupt, so that no library's `except Exception` (torch.compile wraps those) takes
    it for an error of its own."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class _Record:
    """The process's stop signals while a watch is open (written by the handler, main thread)."""

    def __init__(self) -> None:
        self.depth = 0  # open watches (`watch` and `command` nest)
        self.number = 0  # the first signal since the outermost watch opened (0: none yet)
        self.interruptible = 0  # open `interruptible` stretches
        self.raised = False  # `Interrupted` was raised (once per watch)
        self.ignore_at_end = False  # a command: ignore the signals after a stop until exit
        self.previous: dict = {}
        self.pid = 0  # the process that installed the handler (a forked child ignores it)


_RECORD = _Record()


def _handler(number: int, frame) -> None:
    record = _RECORD
    if os.getpid() != record.pid:  # a child forked while the handler was installed
        return
    if record.number == 0:
        record.number = number
    if record.interruptible:
        # a compiled step's backward is traced in autograd's anomaly mode, which prints the
        # forward's stack ("Error detected in ...Backward0. Traceback of forward call") when the
        # trace is abandoned: here that is the stretch the signal ends, not an error to show
        warnings.filterwarnings("ignore", message="Error detected in ", category=UserWarning)
    if record.interruptible and not record.raised:
        record.raised = True
        raise Interrupted(record.number)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _watching(*, command: bool = False) -> Iterator[None]:
    """Record the signals while the block runs (nested blocks share the outermost record)."""
    if not _in_main_thread():
        log.debug("not in the main thread: SIGTERM / SIGUSR1 / SIGINT are not watched")
        yield
        return
    record = _RECORD
    if record.depth == 0:
        record.number, record.raised, record.interruptible = 0, False, 0
        record.ignore_at_end, record.pid = False, os.getpid()
        record.previous = {number: signal.getsignal(number) for number in SIGNALS}
        for number in SIGNALS:
            signal.signal(number, _handler)
    record.ignore_at_end = record.ignore_at_end or command
    record.depth += 1
    try:
        yield
    finally:
        record.depth -= 1
        if record.depth == 0:
            ignore = record.ignore_at_end and record.number != 0
            for number, handler in record.previous.items():
                signal.signal(number, signal.SIG_IGN if ignore else handler)
            record.previous = {}


@contextmanager
def command() -> Iterator[None]:
    """For `attdarts search` and `train`, from the command's start to its end: signals are
    recorded (a run started inside takes them over at its first step boundary); once one came,
    the three signals are ignored until the process exits, so that no later one ends it with
    another status while it writes its last files and shuts down."""
    with _watching(command=True):
        yield


def ignore_in_worker(worker_id: int | None = None) -> None:
    """A data loader's `worker_init_fn`: the worker ignores the signals (the main process saves
    and stops; the worker ends when the main process shuts its loader down)."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class Watch:
    """The flag that the signals raise, read by the loop at step boundaries."""

    def __init__(self, process: runtime.Process, group=None) -> None:
        self.process = process
        self.group = group  # a gloo group for the flag under torchrun (None: the default group)
        self.signal_number = 0

    def stop_requested(self) -> bool:
        """Whether the run stops now: a signal arrived here or, under torchrun, at any rank.
        Every rank must call this at the same step boundaries."""
        number = max(self.signal_number, _RECORD.number)
        if self.process.world_size > 1:
            flag = torch.tensor([number], dtype=torch.int64)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
            number = int(flag.item())
        self.signal_number = number
        return number != 0

    def stopped(self, run_dir: Path | None, epoch: int, step: int) -> Preempted:
        """The exception that ends the run, once its checkpoint is saved (under torchrun, once
        rank 0 has saved it: a rank that left early would make torchrun stop the others)."""
        if self.process.world_size > 1:
            torch.distributed.barrier(group=self.group)
        return Preempted(run_dir, self.signal_number or _RECORD.number, epoch, step)

    def interruptible(self, enabled: bool = True) -> Stretch:
        """`with watch.interruptible():` a stretch whose work may be thrown away because the
        checkpoint on disk is where it began (the caller saved it). Only in one process and
        while the handlers are installed; otherwise the block runs as it is."""
        return Stretch(enabled and self.process.world_size == 1 and _RECORD.depth > 0
                       and _in_main_thread())


class Stretch:
    """Inside, a signal (or one recorded before) raises `Interrupted` at once instead of
    waiting for the next step boundary. An error inside after a signal (a compile worker killed
    by the process group's SIGTERM) counts as the interruption too. `end()` ends the stretch
    before the block does (training's first step ends inside its epoch's loop)."""

    def __init__(self, active: bool) -> None:
        self.active = active

    def __enter__(self) -> Stretch:
        if self.active:
            record = _RECORD
            if record.number and not record.raised:
                self.active = False
                record.raised = True
                raise Interrupted(record.number)
            record.interruptible += 1
        return self

    def end(self) -> None:
        if self.active:
            self.active = False
            _RECORD.interruptible -= 1

    def __exit__(self, kind, error, traceback) -> bool:
        active = self.active
        self.end()
        if active and kind is not None and issubclass(kind, Exception) and _RECORD.number:
            _RECORD.raised = True
            raise Interrupted(_RECORD.number) from error
        return False


class _NotWatched(Watch):
    """What a loop holds outside `watch`: never asks to stop (and costs nothing)."""

    def __init__(self) -> None:
        super().__init__(runtime.Process())

    def stop_requested(self) -> bool:
        return False

    def interruptible(self, enabled: bool = True) -> Stretch:
        return Stretch(False)


NOT_WATCHED = _NotWatched()


@contextmanager
def watch(process: runtime.Process) -> Iterator[Watch]:
    """SIGTERM, SIGUSR1 and SIGINT raise the returned flag while the block runs; the previous
    handlers are restored afterwards (by the outermost watch)."""
    group = None
    if process.world_size > 1 and torch.distributed.get_backend() != "gloo":
        group = torch.distributed.new_group(backend="gloo")  # the flag is a CPU tensor
    with _watching():
        yield Watch(process, group)


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
