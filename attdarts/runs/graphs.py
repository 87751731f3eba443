"""Captured steps: a whole training or search step replayed as one CUDA graph.

A step of `attdarts search` or `attdarts train` launches thousands of small kernels; on a GPU the
launches, not the arithmetic, set its time. `CapturedStep` records the step once with
`torch.cuda.graph` and then replays it: one launch for the whole step (PyTorch's "whole network
capture"). The step function itself is plain eager code; it is capture-safe because

- its inputs are static buffers: every call copies the new batch into the same tensors;
- it never reads a device value on the host (no `.item()`, no `bool(tensor)`, no Python branch
  on a tensor's value, no data-dependent shapes), so capture can record it and a replay needs no
  Python (tests/runs/test_graphs.py runs the steps under a dispatch mode that fails on each);
- what changes between steps lives in device tensors the graph reads: the learning rate
  (`CapturableSGD`: the schedule writes the tensor, nothing is re-captured), the optimiser states,
  BatchNorm statistics;
- random numbers (drop-path masks) come from the default CUDA generator, which `torch.cuda.graph`
  registers by itself: each replay draws fresh numbers from the generator's current seed and
  offset, so `torch.manual_seed` between epochs (the training loop's reseeding) still applies.
  A step that draws from its own `torch.Generator` (say, perturbation noise) passes it as
  `generators=`: each is registered with the graph (`CUDAGraph.register_generator_state`) before
  capture, so its replays advance it as eager calls would. Today's steps use none.

Python-side constants of a step (batch shape, the epoch's drop-path probability, train mode) are
its `key`: a new key re-captures (the training loop's drop-path ramp does so once per epoch; the
first capture is preceded by warm-up steps on a side stream, as torch requires, later ones are
not). Every capture shares one memory pool.

Off the GPU, with `enabled=False` (`--no-graphs`) or under data parallelism, the same function
runs eagerly on the same static buffers: results are those of the plain loop (tested in float64).
A step that must read device values on the host is not captured at all: the search's step says
why (`off_reason`, from a search method's `capture_problem`: GDAS moves its sampled paths to
the host every step) and `state` reports it, e.g. "off (gdas chooses ...)".

If capturing or replaying fails on a user's GPU (an operation the driver cannot capture, a
library that synchronises, a replay error), the run does not die: the step falls back to eager
execution for the rest of the run, with one warning line, and `state` says why (the run records
it in environment.json as ``"graphs": "off (capture failed: REASON)"``). The failed step is run
again eagerly on the same inputs: a capture records kernels without executing them, so nothing
of the failed attempt took effect, and the results are those of an eager run (tested on the CPU
by making capture and replay fail). A warm-up step that fails is the step's own error: run
again eagerly it fails the same way and ends the run as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

__all__ = ["CapturableSGD", "CapturedStep", "capture_possible"]

log = logging.getLogger(__name__)


def capture_possible(device: torch.device | str, *, world_size: int = 1) -> bool:
    """Whether a step on `device` can run as a CUDA graph (one process, CUDA)."""
    return torch.device(device).type == "cuda" and world_size == 1 and torch.cuda.is_available()


class CapturableSGD:
    """A torch SGD optimiser's step with its learning rate read from a device tensor.

    The optimiser stays the object of record (its `param_groups` lr as a float for schedulers and
    checkpoints, its `momentum_buffer` states for resuming); `refresh()`, called outside the
    step, mirrors the group's lr into `lr` (a float64 tensor on the parameters' device), and
    `step()` does torch's multi-tensor SGD (weight decay, momentum, no dampening or Nesterov)
    reading it. On the CPU the update ``p - lr * v`` is written as ``p.addcmul(v, lr, value=-1)``,
    which rounds exactly like torch's ``p.add(v, alpha=-lr)`` (tested bitwise in float32 and
    float64): the CPU's numbers do not change. On CUDA it is one multi-tensor multiply by the rate
    tensor and one subtraction (torch's kernel fuses the two: the last bit may differ there).
    """

    def __init__(self, optimizer: torch.optim.SGD) -> None:
        if len(optimizer.param_groups) != 1:
            raise ValueError("CapturableSGD handles one parameter group")
        group = optimizer.param_groups[0]
        if group["dampening"] or group["nesterov"] or group["maximize"]:
            raise ValueError("CapturableSGD supports momentum and weight decay only")
        self.optimizer = optimizer
        device = group["params"][0].device
        self.lr = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
        self._written = float(group["lr"])

    def refresh(self) -> None:
        """Copy the group's learning rate into `lr` if it changed (never inside a captured step:
        the write would be recorded with today's value)."""
        # the optimiser steps through this object: say so where torch's lr schedulers look, or
        # their first step warns that the optimiser never stepped
        self.optimizer._opt_called = True
        value = float(self.optimizer.param_groups[0]["lr"])
        if value != self._written:
            self.lr.fill_(value)
            self._written = value

    @torch.no_grad()
    def step(self) -> None:
        group = self.optimizer.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        weight_decay, momentum = group["weight_decay"], group["momentum"]
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if momentum:
            grads = self._momentum(params, grads, momentum)
        lr = self.lr.to(params[0].dtype)
        if params[0].is_cuda:  # two multi-tensor kernels, the rate read on the device
            torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
        else:  # one operation per tensor, rounding as torch's alpha=-lr (fused multiply-add)
            torch._foreach_addcmul_(params, grads, [lr] * len(params), value=-1)

    def _momentum(self, params: list[Tensor], grads: list[Tensor], momentum: float) -> list[Tensor]:
        """v <- momentum v + g, created as a copy of g on a parameter's first step (as torch)."""
        state = self.optimizer.state
        buffers = [state[p].get("momentum_buffer") for p in params]
        if all(buffer is not None for buffer in buffers):
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads, alpha=1.0)
            return buffers
        for index, (param, grad) in enumerate(zip(params, grads)):
            if buffers[index] is None:
                buffers[index] = state[param]["momentum_buffer"] = grad.detach().clone()
            else:
                buffers[index].mul_(momentum).add_(grad, alpha=1.0)
        return buffers


def capturable_adam(optimizer: torch.optim.Adam, capturable: bool) -> None:
    """Set Adam's `capturable` flag (after construction or after `load_state_dict`, which brings
    back the flag a checkpoint was written with) and keep its step counters where it needs them:
    on the parameters' device as float32 when capturable, on the CPU in the dtype torch gave
    them otherwise (so a resumed run holds what an uninterrupted one holds)."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and isinstance(state.get("step"), Tensor):
                if capturable:
                    state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
                else:
                    state["step"] = state["step"].to(device="cpu")


class CapturedStep:
    """`step(*inputs)` as a CUDA graph replay when `enabled` on CUDA, eagerly otherwise.

    Every call copies `inputs` (a pytree of tensors) into static buffers and runs the step on
    them. Captured, it returns the same output tensors every call: read them (or add them into a
    running sum) before the next call. `warmup` eager steps on a side stream come before the
    first capture (they are real steps: lazy states such as optimiser buffers are created there).

    A capture or replay that raises turns capturing off for good (module docstring): the call
    runs the step eagerly instead, a warning is logged once, `fallback` keeps the reason and each
    of `listeners` is called with the new `state` (an optimiser that was made capturable goes
    back to its eager form there; the run updates its environment record).
    """

    def __init__(self, step: Callable[..., Any], *, enabled: bool, warmup: int = 3,
                 generators: tuple[torch.Generator, ...] = (), off_reason: str | None = None
                 ) -> None:
        self.step = step
        self.off_reason = off_reason  # why the step is not captured at all (`state`), if known
        if off_reason is not None:
            log.info("captured steps (CUDA graphs) are off: %s", off_reason)
        self.generators = tuple(generators)
        self.enabled = bool(enabled) and torch.cuda.is_available()  # else: eager, the CPU fallback
        self.warmup = warmup
        self.captures = 0  # how many times the step was captured (a re-capture counts)
        self._buffers: list[Tensor] | None = None
        self._spec = None
        self._key: Hashable = None
        self._graph = None
        self._outputs: Any = None
        self._pool = None
        self._side = None  # the warm-up stream
        self._warm = 0
        self.fallback: str | None = None  # why capturing was given up (None: it was not)
        self.listeners: list[Callable[[str], None]] = []  # told `state` after a fallback

    @property
    def state(self) -> str:
        """"on" (captured), "off" (eager), "off (REASON)" when the step said why it cannot be
        captured (`off_reason`), or "off (capture failed: REASON)" after a fallback."""
        if self.fallback is not None:
            return f"off (capture failed: {self.fallback})"
        if self.off_reason is not None and not self.enabled:
            return f"off ({self.off_reason})"
        return "on" if self.enabled else "off"

    def __call__(self, *inputs: Any, key: Hashable = ()) -> Any:
        static = self._fill(inputs)
        if self.fallback is None and self._capturing():
            try:
                return self._captured(static, key)
            except Exception as error:  # noqa: BLE001 - any failure of the GPU path: go eager
                self._fall_back(error)
        return self.step(*static)

    def _captured(self, static: tuple, key: Hashable) -> Any:
        """Warm up, capture (again, for a new key) or replay."""
        if key != self._key:
            self._graph, self._outputs, self._key = None, None, key
        if self._graph is None:
            if self._warm < self.warmup:
                self._warm += 1
                return self._on_side_stream(static)
            self._capture(static)
        self._graph.replay()
        return self._outputs

    def _fall_back(self, error: Exception) -> None:
        """Stop capturing: drop the graph and its memory, say why once, tell the listeners."""
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
        self.fallback = reason if len(reason) <= 200 else reason[:197] + "..."
        self.enabled = False
        self._graph, self._outputs, self._key, self._pool, self._side = None, None, None, None, None
        log.warning("captured steps (CUDA graphs) failed, the run goes on eagerly (same results, "
                    "slower; --no-graphs skips the attempt): %s", self.fallback)
        for listener in self.listeners:
            listener(self.state)

    def _capturing(self) -> bool:
        return self.enabled and all(buffer.is_cuda for buffer in self._buffers
                                    if isinstance(buffer, Tensor))

    def _fill(self, inputs: tuple) -> tuple:
        """Copy `inputs` into the static buffers (new buffers when their shapes change)."""
        leaves, spec = pytree.tree_flatten(inputs)
        # non-tensor leaves (e.g. None for a missing batch) pass through as they are
        if (self._buffers is None or spec != self._spec or len(leaves) != len(self._buffers)
                or any(not _same_slot(b, t) for b, t in zip(self._buffers, leaves))):
            self._buffers = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                                 device=t.device)
                             if isinstance(t, Tensor) else t for t in leaves]
            self._spec = spec
            self._graph, self._outputs, self._key = None, None, None
        for buffer, value in zip(self._buffers, leaves):
            if isinstance(buffer, Tensor):
                buffer.copy_(value)
        return pytree.tree_unflatten(self._buffers, spec)

    def _on_side_stream(self, static: tuple) -> Any:
        if self._side is None:
            self._side = torch.cuda.Stream()
        side = self._side
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.step(*static)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, static: tuple) -> None:
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:  # the default CUDA generator is registered by torch
            graph.register_generator_state(generator)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.step(*static)
        self._graph, self._outputs = graph, outputs
        self.captures += 1


def _same_slot(buffer: Any, value: Any) -> bool:
    """Whether a static buffer can take `value` (same tensor layout, or the same non-tensor)."""
    if isinstance(buffer, Tensor) != isinstance(value, Tensor):
        return False
    if not isinstance(buffer, Tensor):
        return buffer is value or buffer == value
    return (buffer.shape == value.shape and buffer.dtype == value.dtype
            and buffer.device == value.device and buffer.stride() == value.stride())
