"""Search methods: the torch-free catalog of what a space's `methods = [...]` may list.

A space lists its search methods as calls, each with its settings, in the order they act:

    space att_pc_darts {
        ...
        methods = [partial_channels(k=4), edge_normalisation]
    }

Each method is one `Method` entry here: its name (the DSL token), its settings (a
`catalog.Parameter` each: type, default, range), the methods it cannot be combined with, what the
space must have for it (`requires`), the paper, a one-line summary, and the dotted path of its
implementation (`factory`, "package.module:Class", imported only when a supernet is built, so
this table stays torch-free; `attdarts.networks.methods` says what an implementation is). Every
stage reads this table: the transform checks names and settings (located errors, did-you-mean),
the IR validator checks combinations, the printer writes each call in canonical form (settings in
table order, defaults dropped), `attdarts diff` compares them and README's table is checked
against it. A plug-in adds a method with `register` (one entry, one module).

Spaces written before methods were calls set them with `key = value` lines (`partial_channels =
4`, `beta_decay = 0.5`, ...). Those lines still parse (`LEGACY_OPTIONS`: the same checks and
messages as before) and become the same calls; `attdarts fmt` rewrites them as `methods = [...]`.

Torch-free and IR-free (the IR imports this module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from attdarts.language.catalog import DSL_NAME, DuplicateNameError, Parameter, plugin_origin
from attdarts.language.errors import Problem, Span, suggest
from attdarts.language.locations import ATTENTIONS as ATTENTION_MIXTURE
from attdarts.language.locations import OPERATIONS as OPERATION_MIXTURE
from attdarts.language.quantities import COUNT, LATENCY, format_quantity

__all__ = [
    "BUDGET_FORMS", "BUDGET_MEASURES", "DECAYS", "LEGACY_OPTIONS", "METHODS", "Method", "Option",
    "legacy_settings", "register", "resolved", "setting_problem", "settings_hint", "value_text",
]

DECAYS = ("linear", "cosine")  # how DARTS-'s auxiliary coefficient b falls from 1 to 0
UNCHOSEN = ("nothing", "weight")  # what GDAS's candidates off the sampled path add
MAX_PARTIAL_CHANNELS = 64
Space = Any  # an `ir.Space`; the IR imports this module
Call = Any  # an `ir.Call`: `name` and `kwargs`
Requires = Callable[[Space, Call], list[Problem]]


@dataclass(frozen=True)
class Method:
    """One search method: everything every stage needs to know about its name.

    `settings` are its keyword arguments in canonical order; `excludes` the methods it cannot be
    listed with (checked both ways); `requires(space, call)` says what the space lacks for it
    (problems located at the call). `factory` is "package.module:Class", a
    `attdarts.networks.methods.SearchMethod` subclass imported when a supernet is built; `origin`
    is "attdarts" or the plug-in that registered it. `paper`, `summary` and `cost` are what
    README's table says. `derivation` says, in a few words, how the method derives a genotype
    when that is not DARTS's rule (each edge's strongest candidates, each node's strongest
    edges), for the tools that rank genotypes by that rule (`attdarts derive`); None: DARTS's.
    """

    name: str
    paper: str
    summary: str
    factory: str
    settings: dict[str, Parameter] = field(default_factory=dict)
    excludes: tuple[str, ...] = ()
    requires: Requires | None = None
    cost: str = ""
    origin: str = "attdarts"
    derivation: str | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a search method to the catalog (a plug-in's one line; attdarts registers its own here).

    Raises `catalog.DuplicateNameError`, naming who registered the name first, when the name is
    taken: a DSL token names one method. A method registered while a plug-in loads gets that
    plug-in as its origin (`catalog.plugin_origin`).
    """
    if not DSL_NAME.match(method.name):
        raise ValueError(f"search method name {method.name!r} is not a lower_snake DSL name")
    method = replace(method, origin=plugin_origin(method.origin))
    existing = METHODS.get(method.name)
    if existing is not None:
        raise DuplicateNameError(
            f"search method {method.name!r} is already in the catalog (registered by "
            f"{existing.origin}); {method.origin} cannot register it again")
    module, _, name = method.factory.partition(":")
    if not module or not name:
        raise ValueError(f"search method {method.name!r}: factory must be 'package.module:Class', "
                         f"not {method.factory!r}")
    METHODS[method.name] = method
    return method


def resolved(call: Call) -> dict[str, Any]:
    """Every setting of a method call, defaults filled in, in table order."""
    given = dict(call.kwargs)
    return {key: given.get(key, parameter.default)
            for key, parameter in METHODS[call.name].settings.items()}


def setting_problem(method: str, key: str, parameter: Parameter, value: object) -> str | None:
    """Why `value` is not a valid setting `key` of `method` (one line), or None."""
    return parameter.problem(f"'{key}' of {method}", value)


def settings_hint(method: Method, key: str) -> str:
    """The hint for an unknown setting `key` of `method`: the closest name, or what it takes."""
    hint = suggest(key, method.settings)
    if hint is not None:
        return hint
    if not method.settings:
        return f"'{method.name}' takes no settings"
    return f"'{method.name}' takes " + ", ".join(method.settings)


def setting_text(key: str, parameter: Parameter) -> str:
    """A setting as README's table shows it: `k=4` (1 to 64); an optional one without its
    default: `macs` (a count such as 600M, ...)."""
    if parameter.choices:
        allowed = " or ".join(parameter.choices)
    elif parameter.kind is str and parameter.quantity is None:
        allowed = "a path" if key == "table" else "text"
    else:
        allowed = parameter.range().removeprefix("from ")
    if parameter.default is None:
        return f"`{key}` ({allowed})"
    return f"`{key}={parameter.default}` ({allowed})"


def value_text(method: str, key: str, value: Any) -> str | None:
    """How a quantity setting of `method` is written (`600M`, `12ms`), or None for any other
    setting (the printer and `attdarts diff` write those as they write every value)."""
    entry = METHODS.get(method)
    parameter = entry.settings.get(key) if entry is not None else None
    if (parameter is None or parameter.quantity is None or isinstance(value, bool)
            or not isinstance(value, (int, float))):
        return None
    return format_quantity(value, parameter.quantity)


def table() -> str:
    """README's table of the catalog's methods (one row each, in catalog order)."""
    rows = ["| method | settings (default) | paper | what it does | cost |",
            "|---|---|---|---|---|"]
    for method in METHODS.values():
        settings = ", ".join(setting_text(key, parameter)
                             for key, parameter in method.settings.items()) or "-"
        rows.append(f"| `{method.name}` | {settings} | {method.paper} | {method.summary} | "
                    f"{method.cost} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# What a method needs of its space


def _needs_separate_operations(space: Space, call: Call) -> list[Problem]:
    """P-DARTS's skip cap: operations chosen apart from attentions, and something to put instead."""
    operations = [c.name for c in space.operations]
    if space.location_spec.edge_mixture != OPERATION_MIXTURE:
        return [Problem(
            f"'{call.name}' needs operations chosen apart from attentions; location "
            f"'{space.location}' mixes them in one softmax", call.span,
            "use it with after_every, end, after_every_and_end or no_attention")]
    if not set(operations) - {"none", "skip_connect"}:
        return [Problem(
            f"'{call.name}' is {resolved(call)['n']}, but the space has no operation other than "
            "none and skip_connect to put in place of an extra skip", call.span,
            "add an operation such as sep_conv_3x3")]
    return []


def _needs_skip_connect(space: Space, call: Call) -> list[Problem]:
    if "skip_connect" in [c.name for c in space.operations]:
        return []
    return [Problem(f"'{call.name}' counts skip_connect, which the space does not list", call.span,
                    "add skip_connect to the operations or drop the method")]


def _needs_identity_attention(space: Space, call: Call) -> list[Problem]:
    attentions = [c.name for c in space.attentions]
    if space.location_spec.then != ATTENTION_MIXTURE or "identity" not in attentions:
        return [Problem(
            f"'{call.name}' caps edges whose attention derives to identity; it needs "
            "'identity' among the attentions and an attention mixture after every edge",
            call.span, "use location after_every or after_every_and_end with identity listed")]
    if len(attentions) < 2:
        return [Problem(f"'{call.name}' needs an attention other than identity to put in its "
                        "place", call.span, "add an attention such as se")]
    return []


def _refuses_none(space: Space, call: Call) -> list[Problem]:
    """FairDARTS weighs each candidate by its own sigmoid: `none` (always zero) has no place."""
    return [Problem(f"'{call.name}' weighs every candidate by its own sigmoid and searches "
                    "without 'none' (FairDARTS)", operation.span or call.span,
                    "remove 'none' from the operations")
            for operation in space.operations if operation.name == "none"]


def _needs_attention_mixture(space: Space, call: Call) -> list[Problem]:
    location = space.location_spec
    if location.then == ATTENTION_MIXTURE or location.output_attention:
        return []
    return [Problem(f"'{call.name}' adds to attention mixtures; location '{space.location}' has "
                    "none", call.span, "use location after_every, end or after_every_and_end")]


def _tau_order(space: Space, call: Call) -> list[Problem]:
    settings = resolved(call)
    if settings["tau_min"] <= settings["tau_max"]:
        return []
    return [Problem(f"'{call.name}' anneals tau from tau_max down to tau_min, but tau_min "
                    f"({settings['tau_min']}) exceeds tau_max ({settings['tau_max']})", call.span,
                    "GDAS: tau_max=10, tau_min=0.1")]


# ---------------------------------------------------------------------------------------------
# attdarts's methods (README, "Search methods"): one entry and one module each


_PACKAGE = "attdarts.networks.methods"

for _method in (
    Method("partial_channels", "PC-DARTS (Xu et al., ICLR 2020)",
           "k: 1/k of each edge's channels enter the mixtures, the rest bypass them, then a "
           "channel shuffle", f"{_PACKAGE}.partial_channels:PartialChannels",
           {"k": Parameter(int, 4, minimum=1, maximum=MAX_PARTIAL_CHANNELS)},
           cost="mixtures run on C/k channels: memory and time of the search fall (PC-DARTS: "
                "k=4 on CIFAR)"),
    Method("edge_normalisation", "PC-DARTS (Xu et al., ICLR 2020)",
           "one weight per edge, softmax over each node's incoming edges; derivation ranks "
           "edges by operation weight x edge weight",
           f"{_PACKAGE}.edge_normalisation:EdgeNormalisation",
           cost="one more architecture tensor per cell type (one weight per edge); negligible"),
    Method("max_skip_connect", "P-DARTS (Chen et al., ICCV 2019)",
           "at most n skip_connect in the derived normal cell (extra ones become the next "
           "strongest choices)", f"{_PACKAGE}.max_skip_connect:MaxSkipConnect",
           {"n": Parameter(int, 2, minimum=0)}, requires=_needs_separate_operations,
           cost="none: derivation only"),
    Method("max_identity", "new here (P-DARTS's cap on attentions)",
           "at most n edges without attention (identity) in the derived normal cell",
           f"{_PACKAGE}.max_identity:MaxIdentity", {"n": Parameter(int, 2, minimum=0)},
           requires=_needs_identity_attention, cost="none: derivation only"),
    Method("stop_at_skips", "DARTS+ (Liang et al., 2019)",
           "stop the search at the end of the first epoch whose derived normal cell has n or "
           "more skip_connect; epochs without architecture steps and the last epoch do not "
           "count", f"{_PACKAGE}.stop_at_skips:StopAtSkips", {"n": Parameter(int, 2, minimum=1)},
           requires=_needs_skip_connect,
           cost="none (the genotype is derived every epoch anyway); saves the epochs it skips"),
    Method("auxiliary_skip", "DARTS- (Chu et al., ICLR 2021)",
           "every operation mixture gets + b * skip(x) (x at stride 1, its own factorized "
           "reduce at stride 2), b decaying from 1 to 0 over the search; gone at derivation",
           f"{_PACKAGE}.auxiliary_skip:AuxiliarySkip",
           {"decay": Parameter(str, "linear", choices=DECAYS)},
           cost="one addition per edge; a factorized reduce per stride-2 edge"),
    Method("auxiliary_identity", "new here (DARTS- on attentions)",
           "every attention mixture gets + b * h, b decaying from 1 to 0",
           f"{_PACKAGE}.auxiliary_identity:AuxiliaryIdentity",
           {"decay": Parameter(str, "linear", choices=DECAYS)},
           requires=_needs_attention_mixture, cost="one addition per attention mixture"),
    Method("beta_decay", "beta-DARTS (Ye et al., CVPR 2022)",
           "adds lambda_t * (mean over the rows of alpha, beta and gamma of logsumexp(row)) to "
           "the architecture loss; lambda_t in 0-based epoch t of E: linear, lambda * t / E "
           "(beta-DARTS's code), or constant, lambda", f"{_PACKAGE}.beta_decay:BetaDecay",
           {"lambda": Parameter(float, 50.0, minimum=0.0),
            "schedule": Parameter(str, "linear", choices=("linear", "constant"))},
           cost="one logsumexp over the architecture parameters per architecture step"),
    Method("smoothing", "SDARTS-RS (Chen and Hsieh, ICML 2020)",
           "each weight step uses softmax(alpha) + U[-eps, eps], clipped to [0, 1] and "
           "renormalised per row (alpha, beta, gamma); eps grows linearly from start to end "
           "over the epochs", f"{_PACKAGE}.smoothing:RandomSmoothing",
           {"start": Parameter(float, 0.03, minimum=0.0, maximum=1.0),
            "end": Parameter(float, 0.3, minimum=0.0, maximum=1.0)},
           cost="one uniform draw per architecture weight and weight step"),
    Method("drnas", "DrNAS (Chen et al., ICLR 2021)",
           "every row's mixture weights (alpha, beta, gamma) are one sample of Dirichlet(ELU(row) "
           "+ 1), drawn once per step, with pathwise gradients; without a draw (derivation, "
           "weights.jsonl, a forward without weights) softmax; kl > 0 adds kl * KL(Dirichlet "
           "|| Dirichlet(1, ..., 1)) of every row to the architecture loss",
           f"{_PACKAGE}.drnas:DrNAS", {"kl": Parameter(float, 0.0, minimum=0.0)},
           excludes=("fair_darts",),
           cost="one Dirichlet draw per architecture row and step; the forward as DARTS's"),
    Method("fair_darts", "FairDARTS (Chu et al., ECCV 2020)",
           "every candidate weighs sigmoid(raw) on its own (alpha, beta, gamma; no softmax, no "
           "none); the architecture loss adds zero_one * (-mean (sigmoid - 1/2)^2) per kind; "
           "derivation keeps each of a node's keep strongest edges only if its operation's "
           "sigmoid reaches threshold, and an attention only if its sigmoid does (else no "
           "attention)",
           f"{_PACKAGE}.fair_darts:FairDarts",
           {"zero_one": Parameter(float, 10.0, minimum=0.0),
            "threshold": Parameter(float, 0.85, minimum=0.0, maximum=1.0)},
           excludes=("edge_normalisation", "smoothing", "max_identity"),
           requires=_refuses_none,
           cost="a sigmoid instead of a softmax; a node may keep fewer edges, a cell fewer nodes",
           derivation="edges and attentions kept only above a sigmoid threshold"),
    Method("gdas", "GDAS (Dong and Yang, CVPR 2019)",
           "per cell type and step, a Gumbel-max sample of one candidate per row of alpha, beta "
           "and gamma (softmax((log_softmax(raw) + g) / tau)); one-hot weights with the "
           "softmax's gradient (straight-through); only the sampled candidate is computed; tau "
           "linear from tau_max (first epoch) to tau_min (last); derivation keeps each node's "
           "top (operation, input) pairs, an input possibly twice",
           f"{_PACKAGE}.gdas:Gdas",
           {"tau_max": Parameter(float, 10.0, minimum=0.001),
            "tau_min": Parameter(float, 0.1, minimum=0.001),
            "unchosen": Parameter(str, "nothing", choices=UNCHOSEN)},
           excludes=("smoothing", "auxiliary_skip", "drnas", "fair_darts"), requires=_tau_order,
           cost="one candidate per edge instead of all: a fraction of DARTS's time and memory; "
                "one host synchronisation per step (no CUDA graphs)",
           derivation="each node's strongest (operation, input) pairs, an input possibly twice"),
):
    register(_method)


# ---------------------------------------------------------------------------------------------
# The `key = value` lines of spaces written before methods were calls


@dataclass(frozen=True)
class Option:
    """One search-method setting as a `key = value` line of a space (the older form).

    `kind` is "int", "bool", "float" or "choice"; `default` is the value that switches the
    method off (None: not set); `minimum` / `maximum` bound numbers. `method` is the method the
    line switches on and `setting` the setting it gives (None: presence alone); `convert`
    checks a value with the messages spaces have always had.
    """

    key: str
    kind: str
    default: Any
    method: str
    setting: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def convert(self, value: object) -> tuple[Any, str | None]:
        """(the value as the line means it, None) or (None, what was expected)."""
        if self.default is None and value == "none":
            return None, None  # written out only to keep a comment
        if self.kind == "bool":
            if value in ("true", "false"):
                return value == "true", None
            return None, f"'{self.key}' must be true or false"
        if self.kind == "choice":
            if value in self.choices:
                return value, None
            return None, f"'{self.key}' must be one of " + ", ".join(self.choices)
        whole = self.kind == "int"
        parameter = Parameter(int if whole else float, self.default, minimum=self.minimum,
                              maximum=self.maximum)
        problem = parameter.problem(f"'{self.key}'", value)
        if problem is not None:
            return None, problem
        return (int(value) if whole else float(value)), None


LEGACY_OPTIONS: dict[str, Option] = {option.key: option for option in (
    Option("partial_channels", "int", 1, "partial_channels", "k", minimum=1,
           maximum=MAX_PARTIAL_CHANNELS),
    Option("edge_normalisation", "bool", False, "edge_normalisation"),
    Option("max_skip_connect", "int", None, "max_skip_connect", "n", minimum=0),
    Option("max_identity", "int", None, "max_identity", "n", minimum=0),
    Option("stop_at_skips", "int", None, "stop_at_skips", "n", minimum=1),
    Option("auxiliary_skip", "choice", "off", "auxiliary_skip", "decay",
           choices=("off", *DECAYS)),
    Option("auxiliary_identity", "choice", "off", "auxiliary_identity", "decay",
           choices=("off", *DECAYS)),
    Option("beta_decay", "float", 0.0, "beta_decay", "lambda", minimum=0.0),
    Option("beta_decay_schedule", "choice", "linear", "beta_decay", "schedule",
           choices=("linear", "constant")),
    Option("smoothing", "float", 0.0, "smoothing", "start", minimum=0.0, maximum=1.0),
)}


def legacy_settings(values: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """The methods that converted `key = value` lines switch on: {method: (settings, the key of
    the line that switched it on)}, in table order. An option at its default switches nothing on
    (a line kept for its comment); `beta_decay_schedule` only shapes a `beta_decay` that is on;
    `smoothing = eps` is SDARTS-RS with eps held fixed (start = end = eps), what the line always
    meant."""
    methods: dict[str, tuple[dict[str, Any], str]] = {}
    for key, option in LEGACY_OPTIONS.items():
        value = values.get(key, option.default)
        if value is None or value == option.default or option.setting == "schedule":
            continue
        settings = methods.setdefault(option.method, ({}, key))[0]
        if option.setting is not None:
            settings[option.setting] = value
        if key == "smoothing":
            settings["end"] = value
        if key == "beta_decay" and "beta_decay_schedule" in values:
            settings["schedule"] = values["beta_decay_schedule"]
    return methods


def check_settings(method: Method, given: list[tuple[str, Any, Span | None]]
                   ) -> tuple[dict[str, Any], list[Problem]]:
    """A call's settings as written (key, value, where) checked against `method`: the valid ones,
    and a located problem for each unknown, repeated or out-of-range one."""
    valid: dict[str, Any] = {}
    problems = []
    for key, value, span in given:
        if key not in method.settings:
            problems.append(Problem(f"unknown setting '{key}' for search method '{method.name}'",
                                    span, settings_hint(method, key)))
        elif key in valid:
            problems.append(Problem(f"setting '{key}' is given twice", span))
        else:
            parameter = method.settings[key]
            message = setting_problem(method.name, key, parameter, value)
            if (message is None and parameter.quantity == LATENCY
                    and not isinstance(value, str)):  # written: the unit is part of it
                message = (f"'{key}' of {method.name} must be {parameter.range()}, got "
                           f"{value!r}")
            if message:
                problems.append(Problem(message, span))
            else:
                valid[key] = value
    return valid, problems


# ---------------------------------------------------------------------------------------------
# A budget on the final network's cost (issue 21; README "The budget method")


BUDGET_MEASURES = ("macs", "params", "latency")  # exactly one of them names the target
BUDGET_FORMS = ("exceed", "target", "linear")  # attdarts.networks.budget.penalty


def _one_budget(space: Space, call: Call) -> list[Problem]:
    """`budget` names exactly one target, and a latency target needs a table measured on the
    device (counts are built at the final size when no table is given)."""
    given = [key for key in BUDGET_MEASURES if dict(call.kwargs).get(key) is not None]
    if len(given) != 1:
        found = "none" if not given else " and ".join(given)
        return [Problem(f"'budget' needs exactly one of macs, params and latency; it has {found}",
                        call.span, "e.g. budget(macs=600M), budget(params=3.5M) or "
                                   'budget(latency=12ms, table="costs.json")')]
    if given == ["latency"] and dict(call.kwargs).get("table") is None:
        return [Problem("a latency budget needs a cost table measured on the device", call.span,
                        'measure one with attdarts cost SPACE --latency -o costs.json, then '
                        'budget(latency=12ms, table="costs.json")')]
    return []


register(Method(
    "budget", "TF-NAS (Hu et al., ECCV 2020); ProxylessNAS (Cai et al., ICLR 2019)",
    "adds weight x penalty(E / T) to the architecture loss: E the expected cost of the final "
    "network under the step's mixture weights (a cost table's entries, each edge counted as its "
    "share of its node's kept edges), T the target in macs, params (counts: 600M, 3.5M) or "
    "latency (12ms, from table); form exceed: max(0, E/T - 1), target: |E/T - 1| (TF-NAS), "
    "linear: E/T (ProxylessNAS); logs E and the derived genotype's cost every epoch",
    f"{_PACKAGE}.budget:BudgetMethod",
    {"macs": Parameter(int, None, quantity=COUNT),
     "params": Parameter(int, None, quantity=COUNT),
     "latency": Parameter(float, None, quantity=LATENCY),
     "table": Parameter(str, None),
     "weight": Parameter(float, 1.0, minimum=0.0),
     "form": Parameter(str, "exceed", choices=BUDGET_FORMS)},
    requires=_one_budget,
    cost="a weighted sum over the cost table per architecture step; the table is read, or "
         "built at the final size (seconds), when the search starts"))
