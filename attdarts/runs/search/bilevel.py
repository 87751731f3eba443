"""One search iteration: bilevel optimisation of weights and architecture (paper Eq. 12-13).

Each iteration takes one architecture batch and one weight batch (DARTS): first an architecture
step (Adam on alpha / beta / gamma, on the architecture half), then a weight step (SGD with
momentum, gradient clipping, on the weight half).

Architecture gradient:

- first order: grad_a L_val(w, a);
- second order, exactly DARTS (the default, `second_order="darts"`): a virtual step
  ``w' = w - eta (mu m + grad_w L_train(w) + lambda w)`` with the weight optimiser's momentum
  buffer m, then ``grad_a L_val(w', a) - eta (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)``
  with ``w+- = w +- eps grad_w' L_val(w')`` and ``eps = 0.01 / ||grad_w' L_val(w')||``;
- `second_order="authors"`: the authors' code's variant. Their alpha / beta are parameters of the
  model, so every step of the formula treats them like weights: the virtual step drops the
  momentum term and moves them too (``a' = a - eta (grad_a L_train + lambda a)``, lambda the
  network's weight decay); the vector is the gradient of L_val(w', a') with respect to
  (w', a'), ``eps = 0.01 / ||(grad_w', grad_a')||``, and the central difference moves alpha /
  beta with w: ``grad_a L_train(w +- eps v_w, a +- eps v_a)``.

Gradient clipping (`clip`): "weights" clips the weight gradients alone (DARTS). "authors" is what
the authors' `clip_grad_norm_(model.parameters(), 5)` counts: their Adam clears the architecture
gradients before the architecture step, so at clipping time alpha / beta still hold the gradient
the architecture step used (plus Adam's L2 term ``arch_weight_decay * a``, which torch 1.0.1,
their pinned version, adds into `.grad` in place), and the weight step's backward adds
``grad_a L_train(w, a_new)`` on top. Those count in the norm; only the weights are scaled.

The step is written once, over tensors with a leading seed axis (`attdarts.runs.search.seeds`):
one seed's own supernet (S = 1, a plain run) or S seeds' values stacked and run through one
supernet under `torch.vmap` (`--seeds ... --together`). Losses, gradient norms, the clip and the
second order's eps are per seed; SGD and Adam are elementwise; each seed draws from its own
generator. So a seed run together computes what it computes alone.

Everything is functional (`torch.func.functional_call` on parameter dicts, no copy of the model).
The second-order step's extra passes normalise with batch statistics (training mode) on a scratch
copy of the running statistics, so only real steps (the weight step, and the first-order
architecture step as in DARTS) move them; they never affect the search (always training mode).
The virtual step and the Hessian-vector product are `attdarts.runs.search.second_order`'s.
A progressive search's stage (P-DARTS) gives the weights of the candidates it dropped a zero
gradient (`Seeds.zero_idle`), and `arch_grad_clip` clips the architecture gradient per seed.

Search methods act in the iteration through their hooks (`attdarts.networks.methods`): the
mixture weights are made once per step (`Supernet.mixture_weights`, after each method's `draw`
from the run's method generator) and every forward of the step uses them; in the second-order
step they are made once as a graph from the architecture, the passes differentiate with respect
to the weights themselves, and one backward through the graph turns the combination into the
architecture gradient (the "authors" variant moves the architecture, so its passes make the
weights again, from the same draw). The methods add `architecture_loss` (beta-decay) and
`weight_loss` terms; the weight step's weights go through `before_weight_step` (smoothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from attdarts.networks.methods import MixtureWeights, Random
from attdarts.runs import graphs as captured
from attdarts.runs.search.config import SearchConfig, SearchError
from attdarts.runs.search.second_order import gradients, hessian_vector_product, virtual_step
from attdarts.runs.search.seeds import Seeds, tree_detach

Batch = tuple[Tensor, Tensor]  # images and labels; (seeds, batch, ...) when stacked


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of one seed, or of each seed when the labels are (seeds, batch)."""
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels)
    seeds, batch = labels.shape
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return losses.view(seeds, batch).mean(dim=1)


def method_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The generator a run's search methods draw from (random smoothing's noise, a sampler's
    draws): one per seed, apart from torch's global one, seeded from the run's seed."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed((int(seed) * 0x9E3779B1 + 0x5EED) % 2**63)
    return generator


class Bilevel:
    """One search iteration: an architecture step, then a weight step, for one seed or several.

    `model` is the supernet of a plain run (its own parameters are stepped), or `Seeds` (S seeds
    stacked, `--together`); `network` is what a plain weight step calls (the same model, or its
    DistributedDataParallel wrapper). Under data parallelism the architecture gradients are
    averaged across ranks with one all-reduce. `hvp_scale` is DARTS's r in eps = r / ||v||.

    `step` runs as one CUDA graph replay (`attdarts.runs.graphs.CapturedStep`) when `graphs`
    (default: `config.graphs`, else True) and a plain model is on CUDA in one process, unless a
    method says why not (`capture_problem`: GDAS reads its paths on the host); otherwise
    eagerly. The weight update reads the learning rate from a device tensor that `set_lr`
    writes, so the schedule never forces a re-capture; Adam is `capturable` when captured.
    """

    hvp_scale = 0.01

    def __init__(self, model: nn.Module | Seeds, config: SearchConfig, *,
                 network: nn.Module | None = None, world_size: int = 1,
                 graphs: bool | None = None) -> None:
        if isinstance(model, Seeds):
            seeds = model
        else:
            device = next(model.parameters()).device
            seeds = Seeds.own(model, method_generator(config.seed, device), network)
        self.seeds = seeds
        self.model = seeds.model  # the supernet the forward runs (a template when stacked)
        self.network = seeds.network
        self.config = config
        self.world_size = world_size
        self.weight_names, self.arch_names = seeds.weight_names, seeds.arch_names
        self.weight_params, self.arch_params = seeds.weights, seeds.arch
        self.methods = self.model.methods  # the space's search methods (their hooks)
        self.generator = seeds.generators[0]  # one seed's (the checkpoint keeps it)
        if config.clip == "authors" and world_size > 1:
            raise SearchError("the authors' clipping (--clip authors) runs in one process; "
                              "use --clip weights under torchrun")
        # the architecture gradients still held at the weight step (clip="authors"): none before
        # the first architecture step
        self._arch_leftover = [torch.zeros_like(param) for param in self.arch_params]
        self.grad_norm: Tensor | None = None  # the last weight step's clip norm(s), on the device
        # foreach: a few multi-tensor operations instead of four per each of the ~6,000 weight
        # tensors, on every device (torch picks it by itself only on CUDA)
        self.weight_optimizer = torch.optim.SGD(
            self.weight_params, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, foreach=True)
        self.arch_optimizer = torch.optim.Adam(
            self.arch_params, lr=config.arch_lr, betas=config.arch_betas,
            weight_decay=config.arch_weight_decay, foreach=True)
        self.weight_update = captured.CapturableSGD(self.weight_optimizer)
        wanted = getattr(config, "graphs", True) if graphs is None else graphs
        possible = wanted and not seeds.stacked and captured.capture_possible(
            self.weight_params[0].device, world_size=world_size)
        refusal = self.methods.capture_problem() if possible else None  # GDAS: host reads
        self.captured = captured.CapturedStep(
            self._step, enabled=possible and refusal is None, generators=tuple(seeds.generators),
            off_reason=refusal)
        captured.capturable_adam(self.arch_optimizer, self.captured.enabled)
        # a capture that fails goes on eagerly (attdarts.runs.graphs), Adam as eager runs have it
        self.captured.listeners.append(
            lambda _: captured.capturable_adam(self.arch_optimizer, False))

    @property
    def lr(self) -> float:
        return self.weight_optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr
        self.weight_update.refresh()

    @property
    def random(self) -> Random:
        """The random numbers of this step: each seed's from its own method generator."""
        return self.seeds.random()

    def arch(self) -> dict[str, Tensor]:
        """The architecture's current values (leaves) by parameter name."""
        return dict(zip(self.arch_names, self.arch_params))

    # -- steps ----------------------------------------------------------------------------------

    def step(self, weight_batch: Batch, arch_batch: Batch | None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train loss, train correct, val loss, val correct) as device tensors, no sync; each a
        scalar, or one per seed when stacked.

        `arch_batch` None: a weight step only (the architecture's warm-up, `arch_start_epoch`);
        the val numbers are zeros then. Captured, the four tensors are the graph's outputs: read
        them before the next step.
        """
        self.weight_update.refresh()
        return self.captured(weight_batch, arch_batch, key=self.capture_key())

    def capture_key(self) -> tuple:
        """The Python values `_step` reads that may change during a search: a captured step is
        re-captured when they change. The methods' values (beta-decay's lambda_t, smoothing's
        eps) change once per epoch, so such a search re-captures once per epoch; the learning
        rate lives in a device tensor and never forces one."""
        return self.methods.capture_key()

    def _step(self, weight_batch: Batch, arch_batch: Batch | None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The step itself: capture-safe (no host sync, no branch on a tensor's value). The
        methods draw once, before the first forward; every pass of the step uses that draw."""
        draw = self.methods.draw(self.arch(), self.random)
        if arch_batch is None:
            train_loss, train_logits = self.weight_step(weight_batch, draw)
            zero = torch.zeros_like(train_loss.detach())
            return train_loss.detach(), _correct(train_logits, weight_batch[1]), zero, zero
        if self.config.order == 2:
            val_loss, val_logits = self.architecture_step_second_order(weight_batch, arch_batch,
                                                                       draw)
        else:
            val_loss, val_logits = self.architecture_step_first_order(arch_batch, draw)
        train_loss, train_logits = self.weight_step(weight_batch, draw)
        return (train_loss.detach(), _correct(train_logits, weight_batch[1]),
                val_loss.detach(), _correct(val_logits, arch_batch[1]))

    def weight_step(self, batch: Batch, draw: Any = None) -> tuple[Tensor, Tensor]:
        """SGD on the weights; the clip norm counts the weights, or also alpha / beta ("authors"),
        each seed's own. The mixture weights are the step's, through the methods'
        `before_weight_step` (random smoothing draws its noise here); the loss gets their
        `weight_loss`."""
        images, labels = batch
        authors = self.config.clip == "authors"
        self._arch_requires_grad(authors)
        try:
            self.weight_optimizer.zero_grad(set_to_none=True)
            weights = self.model.mixture_weights(self.arch(), draw, weight_step=self.random)
            logits = self.seeds.forward(images, weights)
            loss = _cross_entropy(logits, labels)
            extra = self.methods.weight_loss(weights)
            (loss.sum() if extra is None else loss.sum() + extra.sum()).backward()
            self.seeds.zero_idle()  # the weights of candidates a stage dropped: a zero gradient
            grads = [param.grad for param in self.weight_params if param.grad is not None]
            counted = list(grads)
            if authors:
                counted += self._arch_gradients_held()
            self.grad_norm = self.seeds.clip(self.weight_params, counted, self.config.grad_clip)
            # torch's SGD, learning rate read from a device tensor (single paths: `step_weights`)
            self.seeds.step_weights(self.weight_update.step, self.weight_optimizer)
            self.methods.after_weight_step()
        finally:
            self._arch_requires_grad(True)
        return loss, logits.detach()

    def _arch_gradients_held(self) -> list[Tensor]:
        """What the authors' clip counts beside the weights (see above): alpha / beta's gradients
        as the architecture step left them (`_arch_leftover`) plus this backward's
        ``grad_a L_train``. They are cleared here; only the weights step."""
        held = []
        for param, leftover in zip(self.arch_params, self._arch_leftover):
            grad = param.grad
            held.append(leftover if grad is None else leftover + grad)
            param.grad = None
        return held

    def architecture_step_first_order(self, batch: Batch, draw: Any = None
                                      ) -> tuple[Tensor, Tensor]:
        """Adam on the architecture with grad_a (L_val(w, a) + the methods' terms)."""
        images, labels = batch
        arch = self.arch()
        weights = self.model.mixture_weights(arch, draw)
        logits = self.seeds.forward(images, weights)
        loss = _cross_entropy(logits, labels)
        extra = self.methods.architecture_loss(arch, weights)
        total = loss.sum() if extra is None else loss.sum() + extra.sum()
        grads = gradients(total, self.arch_params)
        self._apply_arch_gradient(list(grads))
        return loss, logits.detach()

    def architecture_step_second_order(self, weight_batch: Batch, arch_batch: Batch,
                                       draw: Any = None) -> tuple[Tensor, Tensor]:
        grads, val_loss, val_logits = self.unrolled_gradient(weight_batch, arch_batch, draw)
        arch = self.arch()
        with torch.enable_grad():
            extra = self.methods.architecture_loss(arch, self.model.mixture_weights(arch, draw))
        if extra is not None:  # the methods' terms do not depend on the weights
            grads = [grad + term for grad, term in
                     zip(grads, gradients(extra.sum(), self.arch_params))]
        self._apply_arch_gradient(grads)
        return val_loss, val_logits

    def unrolled_gradient(self, weight_batch: Batch, arch_batch: Batch, draw: Any = None
                          ) -> tuple[list[Tensor], Tensor, Tensor]:
        """The second-order architecture gradient (one per `arch_params` entry), L_val, logits.

        DARTS's variant keeps the architecture where it is, so the mixture weights are made once
        (`made`, a graph from alpha / beta) and the passes differentiate with respect to copies
        of them (`variables`); the combined gradient goes back through the graph once. The
        authors' variant moves the architecture: each pass makes the weights of its values.
        """
        if self.world_size > 1:
            raise SearchError("second-order search runs in one process; use --order 1 under torchrun")
        config, seeds = self.config, self.seeds
        eta = self.weight_update.lr  # a device tensor: a captured step follows the schedule
        authors = config.second_order == "authors"
        weights = dict(zip(self.weight_names, self.weight_params))
        arch = self.arch()
        buffers = seeds.scratch_buffers()  # the extra passes must not move the real statistics

        def loss_of(w: Mapping[str, Tensor], mixture: MixtureWeights, batch: Batch) -> Tensor:
            logits = seeds.forward(batch[0], mixture, values=dict(w), buffers=buffers)
            return _cross_entropy(logits, batch[1]), logits

        if authors:  # the passes' "architecture": alpha / beta themselves
            def mixture_of(a: Mapping[str, Tensor]) -> MixtureWeights:
                return self.model.mixture_weights(a, draw)
            made, variables = None, arch
        else:  # the passes' "architecture": the step's mixture weights
            made = self.model.mixture_weights(arch, draw)
            variables, mixture_of = _leaves(made)

        # 1. virtual step on the training batch
        if authors:
            leaves = {**weights, **arch}
            train_loss, _ = loss_of(weights, mixture_of(arch), weight_batch)
            grads = gradients(train_loss.sum(), list(leaves.values()))
            moved = virtual_step(leaves, dict(zip(leaves, grads)), eta=eta,
                                 weight_decay=config.weight_decay)
            virtual_weights = {name: moved[name] for name in self.weight_names}
            virtual = {name: moved[name].requires_grad_() for name in self.arch_names}
        else:
            train_loss, _ = loss_of(weights, tree_detach(made), weight_batch)
            grads = gradients(train_loss.sum(), self.weight_params)
            momentum_buffers = {
                name: self.weight_optimizer.state.get(param, {}).get("momentum_buffer")
                for name, param in weights.items()}
            virtual_weights = virtual_step(
                weights, dict(zip(self.weight_names, grads)), eta=eta,
                weight_decay=config.weight_decay, momentum=config.momentum,
                buffers=momentum_buffers)
            virtual = variables
        for value in virtual_weights.values():
            value.requires_grad_()

        # 2. validation loss at w' (and a' for the authors' variant)
        val_loss, val_logits = loss_of(virtual_weights, mixture_of(virtual), arch_batch)
        names = list(virtual)
        values = [virtual[name] for name in names]
        grads = gradients(val_loss.sum(), [*values, *virtual_weights.values()])
        variable_grads, vector = grads[:len(values)], grads[len(values):]

        # 3. finite-difference Hessian-vector product around (w, a), eps per seed; the authors'
        # variant moves alpha / beta along their own validation gradient too
        product, _ = hessian_vector_product(
            lambda w, a: loss_of(w, mixture_of(a), weight_batch)[0].sum(),
            weights, variables, dict(zip(self.weight_names, vector)), r=self.hvp_scale,
            arch_vector=dict(zip(names, variable_grads)) if authors else None, seeds=seeds)
        total = [g - eta.to(g.dtype) * product[name] for g, name in zip(variable_grads, names)]
        if authors:
            return total, val_loss, val_logits.detach()
        # 4. back through the weights' graph: d(weights)/d(alpha, beta) once
        outputs = _made(made, variables)
        arch_grads = gradients(outputs, self.arch_params, grad_outputs=total)
        return list(arch_grads), val_loss, val_logits.detach()

    # -- helpers --------------------------------------------------------------------------------

    def _apply_arch_gradient(self, grads: list[Tensor]) -> None:
        if self.world_size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            grads = list(torch.split(flat, [g.numel() for g in grads]))
            grads = [g.reshape(p.shape) for g, p in zip(grads, self.arch_params)]
        for param, grad in zip(self.arch_params, grads):
            param.grad = grad.detach()
        if getattr(self.config, "arch_grad_clip", None):  # P-DARTS: norm 5, each seed's own
            self.seeds.clip(self.arch_params, [p.grad for p in self.arch_params],
                            self.config.arch_grad_clip)
        if self.config.clip == "authors":
            # the gradient stays in .grad until the weight step's clipping; torch 1.0.1's Adam
            # adds its L2 term to it in place, at the values before the step
            decay = self.config.arch_weight_decay
            self._arch_leftover = [param.grad + decay * param.detach() for param in self.arch_params]
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)

    def _arch_requires_grad(self, flag: bool) -> None:
        for param in self.arch_params:
            param.requires_grad_(flag)

    def state_dict(self) -> dict:
        return {"weight_optimizer": self.weight_optimizer.state_dict(),
                "arch_optimizer": self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        # the checkpoint brings back the flag it was written with (CPU, --no-graphs or captured)
        captured.capturable_adam(self.arch_optimizer, self.captured.enabled)
        self.weight_update.refresh()


def _leaves(made: MixtureWeights) -> tuple[dict[str, Tensor], Callable[[Mapping[str, Tensor]],
                                                                        MixtureWeights]]:
    """Copies of the weights in `made` that depend on the architecture, as leaves by position
    ("0", "1", ...), and the function that puts given values back into `made`'s structure."""
    flat, spec = pytree.tree_flatten(made)
    positions = [i for i, value in enumerate(flat)
                 if isinstance(value, Tensor) and value.requires_grad]
    leaves = {str(i): flat[i].detach().requires_grad_() for i in positions}

    def rebuild(values: Mapping[str, Tensor]) -> MixtureWeights:
        filled = list(flat)
        for i in positions:
            filled[i] = values[str(i)]
        return pytree.tree_unflatten(filled, spec)
    return leaves, rebuild


def _made(made: MixtureWeights, leaves: Mapping[str, Tensor]) -> list[Tensor]:
    """The weights of `made` that `leaves` copy, in the leaves' order."""
    flat, _ = pytree.tree_flatten(made)
    return [flat[int(key)] for key in leaves]


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Correct predictions: a count, or one per seed."""
    return (logits.argmax(dim=-1) == labels).sum(dim=-1)
