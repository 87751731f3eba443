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

Everything is functional (`torch.func.functional_call` on parameter dicts, no copy of the model).
During the second-order step's extra forward passes BatchNorm normalises with batch statistics as
usual (training mode) but its running statistics are left untouched: those passes run on a
scratch copy of the buffers, so only real steps (the weight step, and the first-order
architecture step as in DARTS) move them. Running statistics never affect the search itself,
which runs in training mode throughout.

Two search methods act inside the iteration (options of the space, README "Search methods"):

- beta-decay (beta-DARTS, Ye et al. 2022): the architecture gradient gets
  ``lambda_t * grad_a R(a)`` with ``R = mean over rows of logsumexp(row)``, one mean over every
  row (edge) of alpha, beta and gamma of both cell types (gamma's one row counts as a row);
  `beta_decay` holds lambda_t (the loop sets it per epoch). It adds to the first- and the
  second-order gradient alike (R does not depend on the weights).
- random smoothing (SDARTS-RS, Chen and Hsieh 2020): before each weight step alpha, beta and
  gamma get uniform noise in [-eps, eps] from torch's global generator (so a resume replays it);
  the weight gradient is taken there, then the exact previous values are copied back.

Edge weights of edge normalisation are architecture parameters too (Adam moves them) but neither
method touches them: they act on the kinds of `REGULARISED_KINDS` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from attdarts.networks.supernet import Supernet
from attdarts.runs import graphs as captured
from attdarts.runs.search.config import SearchConfig, SearchError


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)


ParamDict = dict[str, Tensor]
# the architecture kinds that beta-decay and random smoothing act on (`arch.alpha_normal`, ...)
REGULARISED_KINDS = ("alpha", "beta", "gamma")


def regularised_kind(name: str) -> bool:
    """Whether the architecture parameter `name` (e.g. `arch.beta_reduce`) is alpha/beta/gamma."""
    return name.rsplit(".", 1)[-1].split("_", 1)[0] in REGULARISED_KINDS


def beta_decay_term(tensors: Sequence[Tensor]) -> Tensor:
    """beta-DARTS's regulariser: the mean over the rows of all `tensors` of logsumexp(row).

    Each tensor is (rows, candidates); the rows of tensors of different widths are pooled, so
    every edge of alpha and of the attention weights counts once (gamma's one row counts once).
    """
    total = sum(torch.logsumexp(tensor, dim=-1).sum() for tensor in tensors)
    return total / sum(tensor.shape[0] for tensor in tensors)


def virtual_step(
    weights: ParamDict,
    grads: Mapping[str, Tensor],
    *,
    eta: float | Tensor,
    weight_decay: float,
    momentum: float = 0.0,
    buffers: Mapping[str, Tensor | None] | None = None,
) -> ParamDict:
    """DARTS's virtual step ``w' = w - eta (mu m + g + lambda w)``; m missing or None -> 0.

    `eta` may be a 0-dim tensor (the search's learning rate on the device, so that a captured
    step follows the schedule); it rounds as the float does.
    """
    names = list(weights)
    current = [weights[name].detach() for name in names]
    update = list(torch._foreach_add([grads[name] for name in names], current, alpha=weight_decay))
    present = [i for i, name in enumerate(names) if buffers and buffers.get(name) is not None]
    if momentum and present:
        added = torch._foreach_add([update[i] for i in present],
                                   [buffers[names[i]] for i in present], alpha=momentum)
        for index, value in zip(present, added):
            update[index] = value
    if isinstance(eta, Tensor):
        moved = torch._foreach_addcmul(current, update, [eta.to(current[0].dtype)] * len(current),
                                       value=-1)
    else:
        moved = torch._foreach_add(current, update, alpha=-eta)
    return dict(zip(names, moved))


def hessian_vector_product(
    loss: Callable[[ParamDict, ParamDict], Tensor],
    weights: ParamDict,
    arch: ParamDict,
    vector: Mapping[str, Tensor],
    *,
    r: float = 0.01,
    arch_vector: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Finite-difference ``(d^2 L / da dw) v`` as DARTS: eps = r / ||v||, central difference.

    `loss(weights, arch)` evaluates L_train. Returns the product per arch name and eps. With
    `arch_vector` (the authors' variant, where alpha / beta are model parameters) the norm counts
    it too and the architecture moves along it with the weights: the gradient with respect to
    the architecture is taken at ``(w +- eps v, a +- eps v_a)``.
    """
    names = list(weights)
    arch_names = list(arch)
    v = [vector[name] for name in names]
    v_arch = [] if arch_vector is None else [arch_vector[name] for name in arch_names]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v + v_arch]))
    eps = r / norm
    base = [weights[name].detach() for name in names]
    scaled = torch._foreach_mul(v, eps)
    arch_base = [arch[name].detach() for name in arch_names]
    arch_scaled = torch._foreach_mul(v_arch, eps) if v_arch else []

    def arch_gradient(sign: float) -> tuple[Tensor, ...]:
        moved = torch._foreach_add(base, scaled, alpha=sign)
        if arch_vector is None:
            arch_values = [arch[name] for name in arch_names]
        else:
            arch_values = [value.requires_grad_() for value in
                           torch._foreach_add(arch_base, arch_scaled, alpha=sign)]
        value = loss(dict(zip(names, moved)), dict(zip(arch_names, arch_values)))
        return torch.autograd.grad(value, arch_values)

    plus = arch_gradient(1.0)
    minus = arch_gradient(-1.0)
    product = {name: (p - m) / (2.0 * eps) for name, p, m in zip(arch_names, plus, minus)}
    return product, eps


class Bilevel:
    """One search iteration: an architecture step, then a weight step.

    `model` is the supernet; `network` is what the weight step calls (the same model, or its
    DistributedDataParallel wrapper). Under data parallelism the architecture gradients are
    averaged across ranks with one all-reduce. `hvp_scale` is DARTS's r in eps = r / ||v||.

    `step` runs as one CUDA graph replay (`attdarts.runs.graphs.CapturedStep`) when `graphs`
    (default: `config.graphs`, True when the config has no such field) and the model is on CUDA
    in one process; otherwise the same step runs eagerly. The weight update reads the learning
    rate from a device tensor that `set_lr` writes, so the schedule never forces a re-capture;
    Adam is `capturable` when captured.
    """

    hvp_scale = 0.01

    def __init__(self, model: Supernet, config: SearchConfig, *, network: torch.nn.Module | None = None,
                 world_size: int = 1, graphs: bool | None = None) -> None:
        self.model = model
        self.network = network if network is not None else model
        self.config = config
        self.world_size = world_size
        self.weight_names = [name for name, _ in model.named_weights()]
        self.arch_names = [name for name, _ in model.named_architecture()]
        self.weight_params = model.weights()
        self.arch_params = model.architecture()
        space = getattr(model, "space", None)
        # search methods (module docstring): lambda_t of beta-decay, set by the loop per epoch;
        # eps of random smoothing; the parameters both act on
        self.beta_decay = 0.0
        self.smoothing = float(space.smoothing) if space is not None else 0.0
        self.regularised = [param for name, param in zip(self.arch_names, self.arch_params)
                            if regularised_kind(name)]
        if config.clip == "authors" and world_size > 1:
            raise SearchError("the authors' clipping (--clip authors) runs in one process; "
                              "use --clip weights under torchrun")
        # the architecture gradients still held at the weight step (clip="authors"): none before
        # the first architecture step
        self._arch_leftover = [torch.zeros_like(param) for param in self.arch_params]
        self.grad_norm: Tensor | None = None  # the last weight step's clip norm, on the device
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
        device = self.weight_params[0].device
        self.captured = captured.CapturedStep(
            self._step, enabled=wanted and captured.capture_possible(device, world_size=world_size))
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

    # -- steps ----------------------------------------------------------------------------------

    def step(self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor] | None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train loss, train correct, val loss, val correct) as device tensors, no sync.

        `arch_batch` None: a weight step only (the architecture's warm-up, `arch_start_epoch`);
        the val numbers are zeros then. Captured, the four tensors are the graph's outputs: read
        them before the next step.
        """
        self.weight_update.refresh()
        return self.captured(weight_batch, arch_batch, key=self.capture_key())

    def capture_key(self) -> tuple:
        """The Python values `_step` reads that may change during a search: a captured step is
        re-captured when they change. beta-decay's lambda_t changes once per epoch (set by the
        loop), so a search with beta-decay re-captures once per epoch; the learning rate lives in
        a device tensor and never forces one."""
        return (self.beta_decay,)

    def _step(self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor] | None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The step itself: capture-safe (no host sync, no branch on a tensor's value)."""
        if arch_batch is None:
            train_loss, train_logits = self.weight_step(weight_batch)
            zero = torch.zeros((), device=train_loss.device)
            return train_loss.detach(), _correct(train_logits, weight_batch[1]), zero, zero
        if self.config.order == 2:
            val_loss, val_logits = self.architecture_step_second_order(weight_batch, arch_batch)
        else:
            val_loss, val_logits = self.architecture_step_first_order(arch_batch)
        train_loss, train_logits = self.weight_step(weight_batch)
        return (train_loss.detach(), _correct(train_logits, weight_batch[1]),
                val_loss.detach(), _correct(val_logits, arch_batch[1]))

    def weight_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """SGD on the weights; the clip norm counts the weights, or also alpha / beta ("authors")."""
        images, labels = batch
        authors = self.config.clip == "authors"
        self._arch_requires_grad(authors)
        saved = self._perturb_architecture() if self.smoothing else None
        try:
            self.weight_optimizer.zero_grad(set_to_none=True)
            logits = self.network(images)
            loss = _cross_entropy(logits, labels)
            loss.backward()
            if authors:
                self.grad_norm = self._clip_as_the_authors()
            else:
                self.grad_norm = torch.nn.utils.clip_grad_norm_(self.weight_params,
                                                                self.config.grad_clip)
            self.weight_update.step()  # torch's SGD, learning rate read from a device tensor
        finally:
            if saved is not None:
                with torch.no_grad():
                    torch._foreach_copy_(self.regularised, saved)
            self._arch_requires_grad(True)
        return loss, logits.detach()

    def _perturb_architecture(self) -> list[Tensor]:
        """SDARTS-RS: alpha / beta / gamma += U[-eps, eps] (global generator, parameter order);
        returns copies of the values before, which the weight step copies back exactly."""
        saved = [param.detach().clone() for param in self.regularised]
        with torch.no_grad():
            for param in self.regularised:
                param.add_(torch.empty_like(param).uniform_(-self.smoothing, self.smoothing))
        return saved

    def _clip_as_the_authors(self) -> Tensor:
        """Clip the weight gradients by the norm over the weights and alpha / beta (see above).

        alpha / beta's gradients there: what the architecture step left (`_arch_leftover`) plus
        this backward's ``grad_a L_train``. They are cleared afterwards; only the weights step.
        """
        arch_grads = []
        for param, leftover in zip(self.arch_params, self._arch_leftover):
            grad = param.grad
            arch_grads.append(leftover if grad is None else leftover + grad)
            param.grad = None
        weight_grads = [param.grad for param in self.weight_params if param.grad is not None]
        total = torch.nn.utils.get_total_norm([*weight_grads, *arch_grads])
        torch.nn.utils.clip_grads_with_norm_(self.weight_params, self.config.grad_clip, total)
        return total

    def architecture_step_first_order(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self.model(images)
        loss = _cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, self.arch_params)
        self._apply_arch_gradient(self._with_beta_decay(list(grads)))
        return loss, logits.detach()

    def architecture_step_second_order(
        self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        grads, val_loss, val_logits = self.unrolled_gradient(weight_batch, arch_batch)
        self._apply_arch_gradient(self._with_beta_decay(grads))
        return val_loss, val_logits

    def unrolled_gradient(
        self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """The second-order architecture gradient (one per `arch_params` entry), L_val, logits."""
        if self.world_size > 1:
            raise SearchError("second-order search runs in one process; use --order 1 under torchrun")
        config = self.config
        eta = self.weight_update.lr  # a device tensor: a captured step follows the schedule
        authors = config.second_order == "authors"
        weights = dict(zip(self.weight_names, self.weight_params))
        arch = dict(zip(self.arch_names, self.arch_params))
        # scratch BN buffers: the extra passes must not move the real running statistics
        buffers = {name: buffer.clone() for name, buffer in self.model.named_buffers()}

        def forward(w: Mapping[str, Tensor], a: Mapping[str, Tensor], images: Tensor) -> Tensor:
            return functional_call(self.model, ({**w, **a}, buffers), (images,))

        train_images, train_labels = weight_batch
        val_images, val_labels = arch_batch

        # 1. virtual step on the training batch
        if authors:
            leaves = {**weights, **arch}
            train_loss = _cross_entropy(forward(weights, arch, train_images), train_labels)
            grads = torch.autograd.grad(train_loss, list(leaves.values()))
            moved = virtual_step(leaves, dict(zip(leaves, grads)), eta=eta,
                                 weight_decay=config.weight_decay)
            virtual_weights = {name: moved[name] for name in self.weight_names}
            virtual_arch = {name: moved[name].requires_grad_() for name in self.arch_names}
        else:
            detached_arch = {name: value.detach() for name, value in arch.items()}
            train_loss = _cross_entropy(forward(weights, detached_arch, train_images), train_labels)
            grads = torch.autograd.grad(train_loss, self.weight_params)
            momentum_buffers = {
                name: self.weight_optimizer.state.get(param, {}).get("momentum_buffer")
                for name, param in weights.items()}
            virtual_weights = virtual_step(
                weights, dict(zip(self.weight_names, grads)), eta=eta,
                weight_decay=config.weight_decay, momentum=config.momentum,
                buffers=momentum_buffers)
            virtual_arch = arch
        for value in virtual_weights.values():
            value.requires_grad_()

        # 2. validation loss at w' (and a' for the authors' variant)
        val_logits = forward(virtual_weights, virtual_arch, val_images)
        val_loss = _cross_entropy(val_logits, val_labels)
        arch_values = [virtual_arch[name] for name in self.arch_names]
        grads = torch.autograd.grad(val_loss, [*arch_values, *virtual_weights.values()])
        arch_grads, vector = grads[:len(arch_values)], grads[len(arch_values):]

        # 3. finite-difference Hessian-vector product around (w, a); the authors' variant moves
        # alpha / beta along their own validation gradient too
        product, _ = hessian_vector_product(
            lambda w, a: _cross_entropy(forward(w, a, train_images), train_labels),
            weights, arch, dict(zip(self.weight_names, vector)), r=self.hvp_scale,
            arch_vector=dict(zip(self.arch_names, arch_grads)) if authors else None)
        total = [g - eta.to(g.dtype) * product[name]
                 for g, name in zip(arch_grads, self.arch_names)]
        return total, val_loss, val_logits.detach()

    # -- helpers --------------------------------------------------------------------------------

    def _with_beta_decay(self, grads: list[Tensor]) -> list[Tensor]:
        """`grads` (one per `arch_params` entry) plus ``lambda_t * grad_a R`` (beta-DARTS)."""
        if not self.beta_decay or not self.regularised:
            return grads
        with torch.enable_grad():
            extra = iter(torch.autograd.grad(beta_decay_term(self.regularised), self.regularised))
        chosen = {id(param) for param in self.regularised}
        return [grad + self.beta_decay * next(extra) if id(param) in chosen else grad
                for param, grad in zip(self.arch_params, grads)]

    def _apply_arch_gradient(self, grads: list[Tensor]) -> None:
        if self.world_size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            grads = list(torch.split(flat, [g.numel() for g in grads]))
            grads = [g.reshape(p.shape) for g, p in zip(grads, self.arch_params)]
        for param, grad in zip(self.arch_params, grads):
            param.grad = grad.detach()
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


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == labels).sum()
