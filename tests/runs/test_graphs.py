"""Captured steps (attdarts.runs.graphs): what the CPU can prove about a CUDA-graph step.

A CUDA graph replays recorded kernels on fixed addresses without running Python. A step is
replay-safe when (1) it never reads a device value on the host, (2) the work it does is the same
every step, and (3) what changes between steps (learning rate, optimiser states, statistics)
lives in tensors it updates in place. The tests check each on the CPU, where the very same step
function runs eagerly on the same static buffers, and check that doing so changes no number:
float64 runs of the search (first and second order) and the training step (drop path and
auxiliary head) equal hand-written loops over torch's own optimisers, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from attdarts.cli import cli
from attdarts.language.transform import parse_file
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import graphs
from attdarts.runs.search import Bilevel, SearchConfig
from attdarts.runs.search.bilevel import virtual_step
from attdarts.runs import train
from attdarts.runs.train.steps import TrainStep

ROOT = Path(__file__).resolve().parents[2]
ATT_DARTS = ROOT / "genotypes" / "att_darts.geno"
SPACE = """\
space small {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, bam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""
LRS = (0.025, 0.02, 0.011)  # a schedule: the learning rate changes between the steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "small.geno"
    path.write_text(SPACE)
    return path


def search_parts(space_file: Path, order: int, dtype=torch.float64, device="cpu", **changes):
    """A tiny supernet (seeded: two calls give the same weights), its config and 3 batch pairs."""
    torch.manual_seed(0)
    model = compile_supernet(parse_file(space_file).space(), channels=4, layers=3, input_size=8,
                             init="randn").to(device, dtype)
    config = SearchConfig(space_file=str(space_file), dataset="synthetic", batch_size=4,
                          channels=4, layers=3, order=order, **changes)
    generator = torch.Generator().manual_seed(1)

    def batch():
        return (torch.randn(4, 3, 8, 8, generator=generator, dtype=dtype).to(device),
                torch.randint(0, 10, (4,), generator=generator).to(device))

    return model, config, [(batch(), batch()) for _ in LRS]


def train_parts(dtype=torch.float64, device="cpu"):
    """A tiny discrete Att-DARTS network with its auxiliary head, drop path 0.2, and 3 batches."""
    torch.manual_seed(0)
    model = compile_network(parse_file(ATT_DARTS).genotype(), channels=4, layers=3,
                            num_classes=10, input_size=32).to(device, dtype).train()
    model.drop_path_prob = 0.2
    config = train.TrainConfig(batch_size=2, channels=4, layers=3)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 32, 32, generator=generator, dtype=dtype).to(device),
                torch.randint(0, 10, (2,), generator=generator).to(device)) for _ in LRS]
    return model, config, batches


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def assert_same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    for state_a, state_b in zip(a.state_dict()["state"].values(), b.state_dict()["state"].values()):
        for key, value in state_a.items():
            assert torch.equal(torch.as_tensor(value).cpu(), torch.as_tensor(state_b[key]).cpu()), key


# ---------------------------------------------------------------------------------------------
# The update that reads its learning rate from a tensor rounds as torch's


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capturable_sgd_rounds_exactly_as_torch_sgd(dtype):
    torch.manual_seed(0)
    shapes = [(7,), (4, 3, 3, 3), (33, 17), (5,)]
    ours = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    settings = dict(lr=LRS[0], momentum=0.9, weight_decay=3e-4, foreach=True)
    reference = torch.optim.SGD(theirs, **settings)
    update = graphs.CapturableSGD(torch.optim.SGD(ours, **settings))
    for step, lr in enumerate(LRS):
        grads = [torch.randn(s, dtype=dtype) for s in shapes]
        for index, (a, b, g) in enumerate(zip(ours, theirs, grads)):
            # the last parameter gets no gradient in the first step: skipped, as torch skips it
            a.grad = b.grad = None if (step == 0 and index == 3) else g.clone()
        reference.param_groups[0]["lr"] = update.optimizer.param_groups[0]["lr"] = lr
        update.refresh()
        reference.step()
        update.step()
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert_same_optimizer(update.optimizer, reference)


def test_virtual_step_with_a_tensor_eta_rounds_as_with_a_float():
    torch.manual_seed(0)
    weights = {name: torch.randn(5, 3) for name in "abc"}
    grads = {name: torch.randn(5, 3) for name in "abc"}
    buffers = {"a": torch.randn(5, 3), "b": None, "c": torch.randn(5, 3)}
    settings = dict(weight_decay=3e-4, momentum=0.9, buffers=buffers)
    with_float = virtual_step(weights, grads, eta=0.0237, **settings)
    with_tensor = virtual_step(weights, grads, eta=torch.tensor(0.0237, dtype=torch.float64),
                               **settings)
    assert all(torch.equal(with_float[name], with_tensor[name]) for name in weights)


# ---------------------------------------------------------------------------------------------
# (a) the static-buffer step, run eagerly, equals the plain loop (float64, bit for bit)


def plain_search(model, config, batches, *, second_order: Bilevel | None = None):
    """The search loop written out over torch's SGD and Adam: per step an architecture step,
    then a weight step clipped by the weights' norm. `second_order` supplies the unrolled
    architecture gradient (its own optimisers hold the state)."""
    weights, arch = model.weights(), model.architecture()
    if second_order is not None:
        sgd, adam = second_order.weight_optimizer, second_order.arch_optimizer
    else:
        sgd = torch.optim.SGD(weights, lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, foreach=True)
        adam = torch.optim.Adam(arch, lr=config.arch_lr, betas=config.arch_betas,
                                weight_decay=config.arch_weight_decay, foreach=True)
    losses = []
    for (weight_batch, arch_batch), lr in zip(batches, LRS):
        if second_order is not None:
            second_order.set_lr(lr)
            arch_grads, val_loss, _ = second_order.unrolled_gradient(weight_batch, arch_batch)
        else:
            sgd.param_groups[0]["lr"] = lr
            val_loss = F.cross_entropy(model(arch_batch[0]), arch_batch[1])
            arch_grads = torch.autograd.grad(val_loss, arch)
        for param, grad in zip(arch, arch_grads):
            param.grad = grad.detach()
        adam.step()
        adam.zero_grad(set_to_none=True)
        for param in arch:
            param.requires_grad_(False)
        sgd.zero_grad(set_to_none=True)
        train_loss = F.cross_entropy(model(weight_batch[0]), weight_batch[1])
        train_loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, config.grad_clip)
        sgd.step()
        for param in arch:
            param.requires_grad_(True)
        losses.append((train_loss.detach(), val_loss.detach()))
    return losses, sgd, adam


@pytest.mark.parametrize("order", [1, 2])
def test_static_buffer_search_step_equals_the_plain_loop(space_file, order):
    model, config, batches = search_parts(space_file, order)
    bilevel = Bilevel(model, config, graphs=True)  # on the CPU: the eager fallback
    assert not bilevel.captured.enabled
    losses = []
    for (weight_batch, arch_batch), lr in zip(batches, LRS):
        bilevel.set_lr(lr)
        train_loss, _, val_loss, _ = bilevel.step(weight_batch, arch_batch)
        losses.append((train_loss.clone(), val_loss.clone()))

    reference, _, _ = search_parts(space_file, order)
    helper = Bilevel(reference, config, graphs=False) if order == 2 else None
    expected, sgd, adam = plain_search(reference, config, batches, second_order=helper)
    for got, want in zip(losses, expected):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert_same_state(model, reference)
    assert_same_optimizer(bilevel.weight_optimizer, sgd)
    assert_same_optimizer(bilevel.arch_optimizer, adam)


def test_static_buffer_training_step_equals_the_plain_loop():
    model, config, batches = train_parts()
    optimizer = train.make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(batches))
    step = TrainStep(model, optimizer, config, graphs=True)  # CPU: eager fallback
    torch.manual_seed(7)  # the drop-path masks
    results = []
    for images, labels in batches:
        loss, logits = step(images, labels)
        results.append((loss.clone(), logits.clone()))
        scheduler.step()

    reference, _, _ = train_parts()
    reference_optimizer = train.make_optimizer(reference, config)
    reference_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference_optimizer,
                                                                     T_max=len(batches))
    torch.manual_seed(7)
    for (images, labels), (loss, logits) in zip(batches, results):
        want_loss, want_logits = train.train_step(  # torch's SGD step, float learning rate
            reference, reference_optimizer, images, labels,
            auxiliary_weight=config.auxiliary_weight, grad_clip=config.grad_clip)
        reference_scheduler.step()
        assert torch.equal(loss, want_loss) and torch.equal(logits, want_logits)
    assert_same_state(model, reference)
    assert_same_optimizer(optimizer, reference_optimizer)
    assert step.captured.captures == 0


# ---------------------------------------------------------------------------------------------
# (b) no host synchronisation inside a step


class HostSynchronisation(RuntimeError):
    """A step read a device value on the host (or made one from host data)."""


# every aten operation through which a step could wait for the device or branch on its values:
# reading a scalar (`.item()`, `float(t)`, `int(t)`, `bool(t)` and so `if t:`), truth tests,
# results whose shape depends on the values, and host data made into a tensor (`torch.tensor`,
# a host-to-device copy on CUDA)
SYNCING = {
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero",
    "aten::nonzero_static", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
    "aten::unique_consecutive", "aten::repeat_interleave", "aten::lift_fresh",
    "aten::lift_fresh_copy",
}


class NoHostSync(TorchDispatchMode):
    """Fails on every operation of `SYNCING`.

    Why this stands in for CUDA-graph safety: every tensor operation of the step, backward
    included, passes through this mode, and a step that needs a value on the host must reach one
    of these operations to get it (Python cannot read tensor memory another way inside torch's
    dispatch). On CUDA each one either synchronises (forbidden during capture) or, worse, would
    be frozen into the graph with the capture step's value; a Python branch on a tensor is one of
    them too (`bool` -> `is_nonzero` / `_local_scalar_dense`).
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().split(".")[0] in SYNCING:
            raise HostSynchronisation(f"{func.name()} inside the step")
        return func(*args, **(kwargs or {}))


def unguarded(monkeypatch, optimizer: torch.optim.Adam) -> None:
    """Run `optimizer.step` outside the guard. Non-capturable Adam keeps its step counters on the
    host by design (CPU tensors even on CUDA: no device sync) and reads them there; a captured
    step uses `capturable=True`, where torch keeps them on the device and never reads them (its
    own CUDA-graph support, exercised by the CUDA tests below). Torch refuses capturable Adam on
    the CPU, so here its step alone is left out."""
    original = optimizer.step

    def step(*args, **kwargs):
        with _disable_current_modes():
            return original(*args, **kwargs)

    monkeypatch.setattr(optimizer, "step", step)


@pytest.mark.parametrize("order, clip", [(1, "weights"), (2, "weights"), (1, "authors")])
def test_a_search_step_never_waits_for_the_device(space_file, order, clip, monkeypatch):
    model, config, batches = search_parts(space_file, order, dtype=torch.float32, clip=clip)
    bilevel = Bilevel(model, config)
    bilevel.step(*batches[0])  # the first step creates the optimiser states (warm-up on CUDA)
    unguarded(monkeypatch, bilevel.arch_optimizer)
    bilevel.set_lr(LRS[1])
    with NoHostSync():
        bilevel.step(*batches[1])


def test_a_training_step_never_waits_for_the_device():
    model, config, batches = train_parts(dtype=torch.float32)
    step = TrainStep(model, train.make_optimizer(model, config), config)
    step(*batches[0])
    with NoHostSync():
        step(*batches[1])


def test_the_guard_catches_what_it_should():
    with pytest.raises(HostSynchronisation, match="_local_scalar_dense"):
        with NoHostSync():
            torch.ones(2).sum().item()
    with pytest.raises(HostSynchronisation):
        with NoHostSync():
            if torch.ones(2).sum() > 1:
                pass
    with pytest.raises(HostSynchronisation, match="lift_fresh"):
        with NoHostSync():
            torch.tensor([1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# (c) no Python-side or allocation-dependent state


class Recorder(TorchDispatchMode):
    """The aten operations a step runs, with the shapes of their tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        self.calls.append((func.name(), shapes))
        return func(*args, **(kwargs or {}))


def addresses(tensors) -> list[int]:
    return [t.data_ptr() for t in tensors]


def test_every_search_step_does_the_same_work_on_the_same_memory(space_file):
    """A graph captured at step k replays step k's operations on step k's addresses: each later
    step must run the same operations (a schedule change included) and keep every state it reads
    in place. The learning rate is such a state: one tensor, written in place by `set_lr`."""
    model, config, batches = search_parts(space_file, 2, dtype=torch.float32)
    bilevel = Bilevel(model, config)
    bilevel.step(*batches[0])
    lr = bilevel.weight_update.lr
    held = [lr, *model.parameters(), *model.buffers(),
            *(v for s in bilevel.weight_optimizer.state.values() for v in s.values()),
            *(v for s in bilevel.arch_optimizer.state.values() for v in s.values()
              if v.dim()), *bilevel.captured._buffers]
    before = addresses(held)
    work = []
    for pair, value in zip(batches[1:], LRS[1:]):
        bilevel.set_lr(value)
        with Recorder() as recorder:
            bilevel.step(*pair)
        work.append(recorder.calls)
    assert work[0] == work[1]
    assert addresses(held) == before
    assert bilevel.weight_update.lr is lr and float(lr) == LRS[-1]


def test_the_learning_rate_tensor_alone_changes_the_next_step(space_file):
    """Writing the tensor (nothing rebuilt) gives the step that a fresh run at that rate takes."""
    results = []
    for lr in (LRS[0], LRS[2]):
        model, config, batches = search_parts(space_file, 1, dtype=torch.float64)
        bilevel = Bilevel(model, config)
        bilevel.step(*batches[0])
        bilevel.weight_update.lr.fill_(lr)  # the tensor only: the float stays at config.lr
        bilevel.captured(*batches[1])
        results.append([p.detach().clone() for p in model.weights()])
    model, config, batches = search_parts(space_file, 1, dtype=torch.float64)
    bilevel = Bilevel(model, config)
    bilevel.step(*batches[0])
    bilevel.set_lr(LRS[2])
    bilevel.step(*batches[1])
    assert not all(torch.equal(a, b) for a, b in zip(*results))
    assert all(torch.equal(a, b) for a, b in zip(results[1], model.weights()))


# ---------------------------------------------------------------------------------------------
# (d) the capture wrapper: CPU fallback here, the real capture where CUDA exists


def test_the_capture_wrapper_runs_eagerly_on_the_cpu_on_static_buffers():
    calls = []

    def step(x, pair):
        calls.append(x.data_ptr())
        return x * 2 + pair[0] - pair[1]

    captured = graphs.CapturedStep(step, enabled=True)
    assert not captured.enabled or torch.cuda.is_available()
    inputs = [(torch.full((3,), float(i)), (torch.ones(3), torch.zeros(3))) for i in range(3)]
    outputs = [captured(x, pair, key=("epoch", i)).clone() for i, (x, pair) in enumerate(inputs)]
    assert [o.tolist() for o in outputs] == [[1.0] * 3, [3.0] * 3, [5.0] * 3]
    assert len(set(calls)) == 1 and captured.captures == 0  # one static buffer, reused
    captured(torch.zeros(5), (torch.ones(5), torch.zeros(5)))  # a new shape: new buffers
    assert calls[-1] != calls[0]
    assert not graphs.capture_possible("cpu")


def test_graphs_are_a_setting_and_the_cpu_keeps_adam_as_it_was(space_file, tmp_path):
    assert train.TrainConfig().graphs is True
    model, config, batches = search_parts(space_file, 1)
    bilevel = Bilevel(model, config)
    assert not bilevel.arch_optimizer.param_groups[0]["capturable"]
    bilevel.step(*batches[0])
    state = bilevel.state_dict()
    state["arch_optimizer"]["param_groups"][0]["capturable"] = True  # written by a captured run
    bilevel.load_state_dict(state)
    assert not bilevel.arch_optimizer.param_groups[0]["capturable"]
    bilevel.step(*batches[1])  # a capturable Adam would refuse the CPU

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", str(ROOT / "genotypes" / "darts_v2.geno"), "--dataset", "synthetic",
        "--device", "cpu", "--channels", "4", "--layers", "3", "--epochs", "1", "--batch-size",
        "2", "--max-steps-per-epoch", "1", "--no-graphs", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert '"graphs": false' in (out / "config.json").read_text()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("order", [1, 2])
def test_captured_search_steps_equal_eager_ones_on_cuda(space_file, order):
    runs = []
    for captured in (False, True):
        model, config, batches = search_parts(space_file, order, dtype=torch.float32,
                                              device="cuda")
        bilevel = Bilevel(model, config, graphs=captured)
        assert bilevel.captured.enabled == captured
        losses = []
        for _ in range(2):  # 6 steps: 3 warm-up, then a capture and replays
            for pair, lr in zip(batches, LRS):
                bilevel.set_lr(lr)
                losses.append(bilevel.step(*pair)[0].clone())
        runs.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
        assert bilevel.captured.captures == int(captured)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
def test_captured_training_steps_equal_eager_ones_on_cuda():
    runs = []
    for captured in (False, True):
        model, config, batches = train_parts(dtype=torch.float32, device="cuda")
        model.drop_path_prob = 0.0  # masks: the same generator, but compared without them
        optimizer = train.make_optimizer(model, config)
        step = TrainStep(model, optimizer, config, graphs=captured)
        losses = [step(*batches[i % len(batches)])[0].clone() for i in range(6)]
        runs.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
        assert step.captured.captures == int(captured)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class FakeCuda:
    """Stands in for torch.cuda's streams and graphs, logging what the wrapper asks of them: the
    wrapper's bookkeeping (warm-up, capture, replay, re-capture, one pool) runs without a GPU."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[str] = []
        self.where = "main"
        self.pools = 0
        fake = self

        class Stream:
            def wait_stream(self, other) -> None:
                pass

        class Graph:
            def register_generator_state(self, generator) -> None:
                fake.events.append("register generator")

            def replay(self) -> None:
                fake.events.append("replay")

        class Place:
            def __init__(self, where: str) -> None:
                self.where = where

            def __enter__(self):
                self.saved, fake.where = fake.where, self.where

            def __exit__(self, *exc) -> None:
                fake.where = self.saved

        def pool_handle():
            fake.pools += 1
            return ("pool", fake.pools)

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: Place("side stream"))
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", lambda graph, pool=None: Place(f"capture {pool}"))
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", pool_handle)
        monkeypatch.setattr(graphs.CapturedStep, "_capturing", lambda self: True)


def test_the_capture_wrapper_warms_up_captures_replays_and_recaptures(monkeypatch):
    fake = FakeCuda(monkeypatch)

    def step(x):
        fake.events.append(f"run on {fake.where}")
        return x * 2

    generator = torch.Generator()
    captured = graphs.CapturedStep(step, enabled=True, warmup=3, generators=(generator,))
    outputs = [captured(torch.ones(2), key="epoch 1") for _ in range(6)]
    assert fake.events == ["run on side stream"] * 3 + [
        "register generator", "run on capture ('pool', 1)", "replay", "replay", "replay"]
    assert outputs[3] is outputs[4] is outputs[5]  # the graph's static outputs
    fake.events.clear()
    captured(torch.ones(2), key="epoch 2")  # a new key: captured again, without warm-up
    captured(torch.ones(3), key="epoch 2")  # a new shape: new buffers, captured again
    assert fake.events == ["register generator", "run on capture ('pool', 1)", "replay"] * 2
    assert captured.captures == 3 and fake.pools == 1  # every capture shares one pool


# ---------------------------------------------------------------------------------------------
# (e) a capture or replay that fails on a user's GPU: the run goes on eagerly, says so once


CAPTURE_ERROR = "CUDA error: operation not permitted when stream is capturing"
REPLAY_ERROR = "CUDA error: an illegal memory access was encountered\nCUDA kernel errors ..."


def fallback_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "attdarts.runs.graphs" and record.levelname == "WARNING"]


@pytest.mark.parametrize("failure", ["capture", "replay"])
def test_the_capture_wrapper_falls_back_to_eager_steps(monkeypatch, caplog, failure):
    fake = FakeCuda(monkeypatch)

    if failure == "capture":
        class Refused:
            def __enter__(self):
                raise RuntimeError(CAPTURE_ERROR)

            def __exit__(self, *exc) -> None:
                pass

        monkeypatch.setattr(torch.cuda, "graph", lambda graph, pool=None: Refused())
    else:
        monkeypatch.setattr(torch.cuda.CUDAGraph, "replay",
                            lambda self: (_ for _ in ()).throw(RuntimeError(REPLAY_ERROR)))

    def step(x):
        fake.events.append(f"run on {fake.where}")
        return x * 2

    told = []
    captured = graphs.CapturedStep(step, enabled=True, warmup=2)
    captured.listeners.append(told.append)
    assert captured.state == "off" or torch.cuda.is_available()  # not on CUDA: "off" at first
    outputs = [captured(torch.full((2,), float(i)), key="epoch 1") for i in range(5)]
    assert [o.tolist() for o in outputs] == [[2.0 * i] * 2 for i in range(5)]
    recorded = ["run on capture ('pool', 1)"] if failure == "replay" else []
    # two warm-up steps, the failed attempt, then the same step eagerly and eager from then on
    assert fake.events == ["run on side stream"] * 2 + recorded + ["run on main"] * 3
    message = CAPTURE_ERROR if failure == "capture" else REPLAY_ERROR.splitlines()[0]
    assert captured.state == f"off (capture failed: RuntimeError: {message})"
    assert told == [captured.state] and not captured.enabled
    (warning,) = fallback_warnings(caplog)
    assert warning.endswith(f"RuntimeError: {message}") and "\n" not in warning


def fail_on_the_gpu(monkeypatch, failure: str) -> None:
    """Every CapturedStep of a run behaves as on a GPU whose capture (or replay) fails: warm-up
    steps run (eagerly, standing in for the side stream), then the capture raises, or records
    a graph (executing nothing, as a real capture) whose replay raises."""

    class FailingGraph:
        def replay(self) -> None:
            raise RuntimeError(REPLAY_ERROR)

    def capture(self, static) -> None:
        if failure == "capture":
            raise RuntimeError(CAPTURE_ERROR)
        self._graph, self._outputs = FailingGraph(), None
        self.captures += 1

    monkeypatch.setattr(graphs.CapturedStep, "_capturing", lambda self: True)
    monkeypatch.setattr(graphs.CapturedStep, "_on_side_stream",
                        lambda self, static: self.step(*static))
    monkeypatch.setattr(graphs.CapturedStep, "_capture", capture)


def assert_same_files(a: Path, b: Path, names: tuple[str, ...], checkpoint: str) -> None:
    from helpers import metrics_without_timings

    for name in names:
        assert (a / name).read_text() == (b / name).read_text(), name
    assert metrics_without_timings(a) == metrics_without_timings(b)
    first = torch.load(a / checkpoint, weights_only=False)["model"]
    second = torch.load(b / checkpoint, weights_only=False)["model"]
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("failure", ["capture", "replay"])
def test_a_search_whose_capture_fails_goes_on_as_an_eager_run(space_file, tmp_path, monkeypatch,
                                                              caplog, failure):
    from attdarts.runs import data, environment, search

    config = SearchConfig(space_file=str(space_file), dataset="synthetic", batch_size=4,
                          channels=4, layers=3, epochs=2, max_steps_per_epoch=2,
                          deterministic=True)  # 4 steps: 3 warm-up, then the capture fails
    images = data.synthetic_dataset(train=True, size=32, resolution=8)
    search.run_search(config, tmp_path / "eager", device="cpu", dataset=images)
    fail_on_the_gpu(monkeypatch, failure)
    search.run_search(config, tmp_path / "fell back", device="cpu", dataset=images)
    monkeypatch.undo()
    assert_same_files(tmp_path / "eager", tmp_path / "fell back",
                      ("genotype-epoch001.geno", "genotype.geno", "weights.jsonl"),
                      "checkpoint.pt")
    (warning,) = fallback_warnings(caplog)
    recorded = environment.read(tmp_path / "fell back")["graphs"]
    assert recorded.startswith("off (capture failed: RuntimeError: CUDA error: ")
    assert warning.endswith(recorded[len("off (capture failed: "):-1])
    assert environment.read(tmp_path / "eager")["graphs"] == "off"


@pytest.mark.parametrize("failure", ["capture", "replay"])
def test_a_training_whose_capture_fails_goes_on_as_an_eager_run(tmp_path, monkeypatch, caplog,
                                                                failure):
    from attdarts.runs import environment

    genotype = parse_file(ATT_DARTS).genotype()
    # 4 steps over two epochs (drop path ramped: epoch 2 is a new capture key)
    config = train.TrainConfig.recipe("synthetic", channels=4, layers=3, epochs=2, batch_size=4,
                                      max_steps_per_epoch=2, seed=1, deterministic=True)
    train.run_training(config, genotype, run_dir=tmp_path / "eager", device="cpu")
    fail_on_the_gpu(monkeypatch, failure)
    train.run_training(config, genotype, run_dir=tmp_path / "fell back", device="cpu")
    monkeypatch.undo()
    assert_same_files(tmp_path / "eager", tmp_path / "fell back", ("genotype.geno",), "last.pt")
    assert len(fallback_warnings(caplog)) == 1
    recorded = environment.read(tmp_path / "fell back")["graphs"]
    assert recorded.startswith("off (capture failed: RuntimeError: CUDA error: ")
