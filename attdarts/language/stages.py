"""Search stages: a progressive search declared in the space (P-DARTS, Chen et al., ICCV 2019).

A space may list stages; the search then runs them in order, each with its own depth, length,
warm-up, candidates per edge and dropout on skip connections:

    space pdarts {
        operations = [none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, ...]
        nodes = 4
        keep = 2
        location = no_attention
        mixing = sum
        methods = [max_skip_connect(n=2)]
        stages = [
            stage(layers=5, epochs=25, warmup=10),
            stage(layers=11, epochs=25, warmup=10, operations=5, skip_dropout=0.4),
            stage(layers=17, epochs=25, warmup=10, operations=3, skip_dropout=0.7),
        ]
    }

Each `stage(...)` call takes the settings of `SETTINGS` (`ir.Stage` holds them):

- `layers`, `epochs`, `warmup`: cells of the stage's supernet, its epochs, and how many of them
  run weight steps only; left out, the run's `--layers`, `--epochs` and `--arch-start-epoch`
  (a `keep` stage has the depth of the supernet it keeps);
- `operations`, `attentions`: candidates kept per edge in the operation mixture (alpha) and in
  the attention mixtures (beta, and gamma on the cell output) from this stage on: on entering
  the stage, each row drops its weakest candidates, by the previous stage's weights; left out,
  the previous stage's count (the first stage searches every candidate);
- `skip_dropout`: P-DARTS's dropout rate r on the stride-1 skip connections of the stage;
- `start`: `fresh` (P-DARTS) builds the stage's supernet anew, weights and architecture
  initialised again; `keep` carries the previous stage's supernet, architecture and optimiser
  states on (DrNAS's second stage), only the candidates dropped change;
- `partial_channels`: the k of the space's `partial_channels(k=...)` method from this stage on
  (left out: the stage before's). It may only fall: a `keep` stage with a smaller k widens the
  supernet it keeps (DrNAS's K=6 then K=4: the kept candidates' weights carry over, the new
  channels copies of old ones, `attdarts.networks.methods.drnas.widen_module`).

This module checks a stage call's settings (`check_settings`) and a space's stages against the
rest of the space (`stage_problems`), without torch and without the IR (the IR imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attdarts import recipes
from attdarts.language import kinds
from attdarts.language.catalog import Parameter
from attdarts.language.errors import Problem, Span, suggest

__all__ = ["DEFAULTS", "SETTINGS", "STAGE", "STARTS", "check_settings", "partial_channels_at",
           "planned_epochs", "stage_problems"]

STAGE = "stage"  # the call's name in `stages = [...]`
STARTS = ("fresh", "keep")
MAX_STAGES = 16
MAX_SKIP_DROPOUT = 0.99  # a rate of 1 would divide by zero (inverted dropout scales by 1 / (1 - r))

# every setting of a stage, in canonical (printed) order; the defaults of `DEFAULTS`: None
# means "the run's setting" (layers, epochs, warmup) or "the previous stage's count"
SETTINGS: dict[str, Parameter] = {
    "layers": Parameter(int, recipes.SEARCH["paper"]["layers"], minimum=recipes.MIN_LAYERS,
                        maximum=recipes.MAX_LAYERS),
    "epochs": Parameter(int, recipes.SEARCH["paper"]["epochs"], minimum=1),
    "warmup": Parameter(int, 0, minimum=0),
    "operations": Parameter(int, 2, minimum=2),
    "attentions": Parameter(int, 1, minimum=1),
    "skip_dropout": Parameter(float, 0.0, minimum=0.0, maximum=MAX_SKIP_DROPOUT),
    "start": Parameter(str, "fresh", choices=STARTS),
    "partial_channels": Parameter(int, 4, minimum=1, maximum=64),
}
DEFAULTS: dict[str, Any] = {"layers": None, "epochs": None, "warmup": None, "operations": None,
                            "attentions": None, "skip_dropout": 0.0, "start": "fresh",
                            "partial_channels": None}

Space = Any  # an `ir.Space`


def check_settings(name: str, given: Sequence[tuple[str, Any, Span | None]], span: Span | None
                   ) -> tuple[dict[str, Any] | None, list[Problem]]:
    """One entry of `stages = [...]` as written: its call name and its keyword arguments (key,
    value, where). Returns the valid settings (floats as floats) or None, and a located problem
    for every unknown, repeated or out-of-range one."""
    problems: list[Problem] = []
    if name != STAGE:
        problems.append(Problem(f"'stages' lists stage(...) calls, not '{name}'", span,
                                "write each stage as stage(layers=..., epochs=..., ...)"))
    valid: dict[str, Any] = {}
    for key, value, where in given:
        if key not in SETTINGS:
            problems.append(Problem(f"unknown stage setting '{key}'", where,
                                    suggest(key, SETTINGS) or "a stage takes " + ", ".join(SETTINGS)))
        elif key in valid:
            problems.append(Problem(f"stage setting '{key}' is given twice", where))
        else:
            parameter = SETTINGS[key]
            message = parameter.problem(f"'{key}' of a stage", value)
            if message is not None:
                problems.append(Problem(message, where, suggest(str(value), parameter.choices)
                                        if parameter.choices else None))
            else:
                valid[key] = float(value) if parameter.kind is float else value
    return (None if problems else valid), problems


def planned_epochs(space: Space, run_epochs: int) -> int:
    """The epochs of a search over `space` whose run setting `epochs` is `run_epochs`: every
    stage's (a stage without `epochs` runs the run's), or the run's when there are no stages."""
    if not space.stages:
        return run_epochs
    return sum(run_epochs if stage.epochs is None else stage.epochs for stage in space.stages)


def partial_channels_at(space: Space, number: int) -> int | None:
    """The k of partial channels in 0-based stage `number` of `space`: the last `partial_channels`
    a stage up to it gives, else the space's `partial_channels(k=...)`; None without that method."""
    call = space.method("partial_channels")
    if call is None:
        return None
    given = [stage.partial_channels for stage in space.stages[:number + 1]
             if stage.partial_channels is not None]
    return given[-1] if given else int(space.setting("partial_channels", "k"))


def stage_problems(space: Space) -> list[Problem]:
    """Why `space`'s stages cannot run: counts beyond the candidates or growing again, a warm-up
    as long as its stage, `keep` with nothing to keep or another depth, skip dropout without
    skip_connect, a method that ends the search early or rides on a candidate a stage may drop
    (DARTS-'s auxiliary skip on skip_connect's weight), a skip cap with no operation left to
    replace a skip, a location whose derivation reads part of a pruned mixture (double_mixed)."""
    if not space.stages:
        return []
    where = space.span_of("stages")
    problems: list[Problem] = []
    if len(space.stages) > MAX_STAGES:
        problems.append(Problem(f"{len(space.stages)} stages; a search has at most {MAX_STAGES}",
                                where))
    columns = space.location_spec.columns(space)
    limits = {"operations": len(columns[kinds.OPERATION]),
              "attentions": max((len(columns[kind]) for kind in (kinds.ATTENTION, kinds.OUTPUT)
                                 if kind in columns), default=0)}
    counts = dict(limits)  # candidates kept per row before each stage
    for number, stage in enumerate(space.stages, 1):
        span = stage.span or where
        problems.extend(_stage_problems(space, number, stage, span, limits, counts))
    if space.method("auxiliary_skip") is not None and "skip_connect" in columns[kinds.OPERATION]:
        problems.append(Problem(
            "search method 'auxiliary_skip' cannot be combined with stages when the space lists "
            "skip_connect", space.method("auxiliary_skip").span,
            "its term rides on skip_connect's weight, which a stage may drop"))
    problems.extend(_cap_problems(space, counts["operations"], where))
    problems.extend(_channel_problems(space))
    location = space.location_spec
    if location.mixes_operations_and_attentions and location.then is not None:
        problems.append(Problem(
            f"location '{space.location}' cannot be searched in stages: its edges take the "
            "operation and the attention from separate columns of mixtures that hold both, and "
            "a stage's pruning by weight may drop every candidate of one",
            space.span_of("location"), "use mixed_with_operation or after_every"))
    if any(call.name == "stop_at_skips" for call in space.methods):
        problems.append(Problem("search method 'stop_at_skips' cannot be combined with stages",
                                space.method("stop_at_skips").span,
                                "an early stop would end the whole progressive search; list "
                                "only one of them"))
    return problems


def _stage_problems(space: Space, number: int, stage: Any, span: Span | None,
                    limits: dict[str, int], counts: dict[str, int]) -> list[Problem]:
    """The problems of stage `number` (1-based); `counts` (candidates kept before it) moves on."""
    problems = []
    label = f"stage {number}"
    if stage.warmup is not None and stage.epochs is not None and stage.warmup >= stage.epochs:
        problems.append(Problem(
            f"{label}: 'warmup' is {stage.warmup} but the stage has {stage.epochs} epochs", span,
            "the warm-up must leave epochs that train the architecture"))
    for key, limit in limits.items():
        count = getattr(stage, key)
        if count is None:
            continue
        if limit == 0:
            problems.append(Problem(
                f"{label}: '{key}' counts the candidates of attention mixtures; location "
                f"'{space.location}' has none", span, "leave 'attentions' out"))
        elif count > limit:
            problems.append(Problem(f"{label} keeps {count} {key} per edge; the space has "
                                    f"{limit}", span, f"at most {limit}"))
        elif number == 1 and count != limit:
            problems.append(Problem(
                f"the first stage searches every candidate ({limit} {key}); it cannot keep "
                f"{count}", span, f"leave '{key}' out of the first stage or write {limit}"))
        elif count > counts[key]:
            problems.append(Problem(
                f"{label} keeps {count} {key} per edge, more than the {counts[key]} before it",
                span, "a dropped candidate does not come back; counts may only fall"))
        else:
            counts[key] = count
    if stage.start == "keep":
        previous = space.stages[number - 2] if number > 1 else None
        if previous is None:
            problems.append(Problem("the first stage has no supernet to keep", span,
                                    "write start=keep on a later stage"))
        elif stage.layers is not None and stage.layers != previous.layers:
            problems.append(Problem(
                f"{label} keeps the supernet of stage {number - 1}, so it has its depth; "
                f"'layers' differs", span, "leave 'layers' out of the kept stage, or start fresh"))
    if stage.skip_dropout and "skip_connect" not in [call.name for call in space.operations]:
        problems.append(Problem(f"{label}: 'skip_dropout' acts on skip_connect, which the space "
                                "does not list", span, "add skip_connect or drop the setting"))
    return problems


def _channel_problems(space: Space) -> list[Problem]:
    """A stage's `partial_channels` needs the method, and may only fall (a kept supernet is
    widened, never narrowed; DrNAS: K=6, then K=4)."""
    problems = []
    listed = space.method("partial_channels") is not None
    before = int(space.setting("partial_channels", "k")) if listed else None
    for number, stage in enumerate(space.stages, 1):
        k = stage.partial_channels
        if k is None:
            continue
        span = stage.span or space.span_of("stages")
        if not listed:
            problems.append(Problem(
                f"stage {number}: 'partial_channels' sets the k of search method "
                "'partial_channels', which the space does not list", span,
                "add partial_channels(k=...) to 'methods' (the first stage's k)"))
            continue
        if number == 1 and k != before:
            problems.append(Problem(
                f"the first stage has the space's partial_channels(k={before}); it cannot say "
                f"partial_channels={k}", span, "set k in 'methods', or leave it out of stage 1"))
        elif k > before:
            problems.append(Problem(
                f"stage {number}: partial_channels={k} is more than the k={before} before it",
                span, "a stage can only widen the edges (a smaller k: C/k channels each), "
                "never narrow them"))
        before = k
    return problems


def _cap_problems(space: Space, kept: int, where: Span | None) -> list[Problem]:
    """P-DARTS's skip cap gives a capped edge its strongest other searched operation, never
    `none`: the last stage must leave one besides none and skip_connect (P-DARTS keeps 3)."""
    names = [call.name for call in space.operations]
    needed = 1 + ("none" in names) + ("skip_connect" in names)
    if space.method("max_skip_connect") is None or kept >= needed:
        return []
    last = next((stage for stage in reversed(space.stages) if stage.operations is not None), None)
    return [Problem(
        f"the last stage keeps {kept} operations per edge; with 'max_skip_connect' an edge "
        "that keeps only " + " and ".join(n for n in ("none", "skip_connect") if n in names) +
        " has no operation to take skip_connect's place",
        (last.span if last is not None else None) or where, f"keep at least {needed}")]
