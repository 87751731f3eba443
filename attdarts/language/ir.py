"""The intermediate representation: frozen pydantic models of genotypes and search spaces.

Every later stage (printer, network, supernet, render, diff, interop) consumes these objects.
They are immutable and hashable, so they can key caches. Equality is content equality: the
source `span` and the `comments` are presentation and take no part in `==` or `hash`, while
`model_dump()` keeps comments (so the printer's round trip can be checked) and drops spans.

Validators settle what the text alone decides (names unique, inputs defined before use, at least
one edge per node, the output concatenating existing nodes). Whether an operation called
`cbam` exists is the catalog's question, answered in `transform`, which keeps this module free
of torch and of lark.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from attdarts.language import methods as method_catalog
from attdarts.language import stages as stage_catalog
from attdarts.language.errors import DslError, Problem, Span, suggest
from attdarts.language.locations import LOCATIONS
from attdarts.language.locations import Location as LocationSpec

Value = Union[int, float, str]

INPUTS = ("c_k2", "c_k1")  # c_{k-2} and c_{k-1}: outputs of the two previous cells
OUTPUT = "c_k"  # the cell's output (concatenation of intermediate nodes)
CELL_KINDS = ("normal", "reduce")  # a genotype's two cells, in text order
RESERVED = frozenset((*INPUTS, OUTPUT, "concat", "normal", "reduce", "genotype", "space"))

Mixing = Literal["sum", "product"]

_PRESENTATION = frozenset(
    {"span", "name_spans", "comments", "closing", "setting_comments", "setting_spans"})


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    span: Span | None = Field(default=None, exclude=True, repr=False)

    def _content(self) -> tuple:
        return tuple(
            getattr(self, name) for name in type(self).model_fields if name not in _PRESENTATION
        )

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._content() == other._content()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._content()))


class Comments(_Node):
    """Comments that belong to a statement: whole lines above it, and one at the end of its line."""

    leading: tuple[str, ...] = ()
    trailing: str | None = None

    def __bool__(self) -> bool:
        return bool(self.leading or self.trailing)

    def merged(self, other: "Comments") -> "Comments":
        """These and `other`'s comments on one printed statement: leading lines in order; a
        second trailing comment becomes a leading line (nothing is dropped)."""
        if not self:
            return other
        trailing, leading = self.trailing, self.leading + other.leading
        if other.trailing is not None:
            if trailing is None:
                trailing = other.trailing
            else:
                leading += (other.trailing,)
        return Comments(leading=leading, trailing=trailing)


NO_COMMENTS = Comments()


class Call(_Node):
    """An operation, attention or search method by name, with keyword arguments in canonical
    order (catalog order; an operation or attention drops defaults, a search method states
    every setting)."""

    name: str
    kwargs: tuple[tuple[str, Value], ...] = ()

    def kwargs_dict(self) -> dict[str, Value]:
        return dict(self.kwargs)


class Edge(_Node):
    """`operation(input) >> attention`; attention None means no attention (identity)."""

    operation: Call
    input: str
    attention: Call | None = None


class Node(_Node):
    """An intermediate node: the sum of its incoming edges (paper, Eq. 11)."""

    name: str
    edges: tuple[Edge, ...]
    comments: Comments = NO_COMMENTS


class Output(_Node):
    """The cell output c_k: channel concatenation of `nodes`, optionally followed by an attention."""

    nodes: tuple[str, ...]
    attention: Call | None = None
    comments: Comments = NO_COMMENTS
    name_spans: tuple[Span, ...] = Field(default=(), exclude=True, repr=False)

    def span_of(self, position: int) -> Span | None:
        return self.name_spans[position] if position < len(self.name_spans) else self.span


class Cell(_Node):
    kind: Literal["normal", "reduce"]
    nodes: tuple[Node, ...]
    output: Output
    comments: Comments = NO_COMMENTS
    closing: Comments = NO_COMMENTS

    @model_validator(mode="after")
    def _check(self) -> "Cell":
        problems = cell_problems(self)
        if problems:
            raise DslError(problems)
        return self

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)

    def index_of(self, name: str) -> int:
        """DARTS numbering: 0 = c_k2, 1 = c_k1, j + 2 = intermediate node j."""
        if name in INPUTS:
            return INPUTS.index(name)
        return 2 + self.node_names.index(name)


class Meta(_Node):
    """Free metadata: `key = "text"` (source paper, notes, ...)."""

    key: str
    value: str
    comments: Comments = NO_COMMENTS


class Genotype(_Node):
    name: str
    meta: tuple[Meta, ...] = ()
    normal: Cell
    reduce: Cell
    comments: Comments = NO_COMMENTS
    closing: Comments = NO_COMMENTS

    @model_validator(mode="after")
    def _check(self) -> "Genotype":
        if self.normal.kind != "normal" or self.reduce.kind != "reduce":
            raise DslError.single("a genotype needs a 'normal' and a 'reduce' cell", self.span)
        problems = _duplicate_keys(self.meta)
        if problems:
            raise DslError(problems)
        return self

    def cell(self, kind: str) -> Cell:
        return self.normal if kind == "normal" else self.reduce

    def meta_value(self, key: str) -> str | None:
        return next((m.value for m in self.meta if m.key == key), None)


class Stage(_Node):
    """One stage of a progressive search (`attdarts.language.stages`: what each setting means).
    None: the run's setting (layers, epochs, warmup) or the previous stage's count."""

    layers: int | None = None
    epochs: int | None = None
    warmup: int | None = None
    operations: int | None = None
    attentions: int | None = None
    skip_dropout: float = 0.0
    start: Literal["fresh", "keep"] = "fresh"
    partial_channels: int | None = None

    def call(self) -> Call:
        """The stage as the text writes it: `stage(...)` with the settings that are not their
        defaults, in canonical order."""
        kwargs = tuple((key, getattr(self, key)) for key in stage_catalog.SETTINGS
                       if getattr(self, key) != stage_catalog.DEFAULTS[key])
        return Call(name=stage_catalog.STAGE, kwargs=kwargs, span=self.span)


# Intermediate nodes of a search space. A supernet cell has n(n+3)/2 mixed edges (14 at the
# papers' 4); past this limit a typing slip would build a supernet for minutes without a word.
MAX_SPACE_NODES = 16


class Space(_Node):
    """A search space: candidate operations and attentions, cell size, and how attention is placed.

    `location` is one of the six attention locations of the authors' code (`after_every` is the
    paper's); `mixing` is `sum` (Att-DARTS-S, Eq. 10) or `product` (Att-DARTS-P, Eq. 17).
    `methods` are the search methods (`attdarts.language.methods.METHODS`), one call each with
    every setting (defaults filled in, catalog order), in the order the space lists them.
    `stages` make the search progressive (`attdarts.language.stages`); none: one search.
    """

    name: str
    meta: tuple[Meta, ...] = ()
    operations: tuple[Call, ...]
    attentions: tuple[Call, ...] = ()
    nodes: int = 4
    keep: int = 2
    location: str = "after_every"  # a key of locations.LOCATIONS
    mixing: Mixing = "sum"
    methods: tuple[Call, ...] = ()
    stages: tuple[Stage, ...] = ()
    setting_comments: tuple[tuple[str, Comments], ...] = Field(default=(), exclude=False)
    setting_spans: tuple[tuple[str, Span], ...] = Field(default=(), exclude=True, repr=False)
    comments: Comments = NO_COMMENTS
    closing: Comments = NO_COMMENTS

    @field_validator("methods")
    @classmethod
    def _canonical_methods(cls, calls: tuple[Call, ...]) -> tuple[Call, ...]:
        return tuple(_canonical_method(call) for call in calls)

    @model_validator(mode="after")
    def _check(self) -> "Space":
        problems = _duplicate_keys(self.meta)
        for label, calls in (("operation", self.operations), ("attention", self.attentions)):
            seen: set[Call] = set()
            for call in calls:
                if call in seen:
                    problems.append(Problem(f"{label} '{call.name}' is listed twice", call.span))
                seen.add(call)
        if not self.operations:
            problems.append(Problem("a space needs at least one operation", self.span))
        if self.location not in LOCATIONS:
            problems.append(Problem(
                f"unknown location '{self.location}'", self.span_of("location"),
                suggest(self.location, LOCATIONS) or "choose one of " + ", ".join(LOCATIONS)))
        else:
            problems.extend(self.location_spec.problems(self))
        if self.nodes < 1:
            problems.append(Problem("'nodes' must be at least 1", self.span))
        elif self.nodes > MAX_SPACE_NODES:
            problems.append(Problem(
                f"'nodes' is {self.nodes}; a search space has at most {MAX_SPACE_NODES}",
                self.span_of("nodes"),
                f"the papers search 4 (NASNet's cells have 5); {self.nodes} nodes would give "
                f"{self.nodes * (self.nodes + 3) // 2} mixed edges per cell"))
        if not 1 <= self.keep:
            problems.append(Problem("'keep' must be at least 1", self.span))
        if not problems:
            problems = method_problems(self)
        if not problems:
            problems = derivation_problems(self) + stage_catalog.stage_problems(self)
        if problems:
            raise DslError(problems)
        return self

    def method(self, name: str) -> Call | None:
        """The call of search method `name`, or None when the space does not list it."""
        return next((call for call in self.methods if call.name == name), None)

    def at_stage(self, number: int) -> Space:
        """The space as 0-based stage `number` builds its supernet: the space itself, or with
        the stage's `partial_channels` k in its `partial_channels(k=...)` method."""
        k = stage_catalog.partial_channels_at(self, number) if self.stages else None
        if k is None or k == self.setting("partial_channels", "k"):
            return self
        methods = tuple(call.model_copy(update={"kwargs": tuple(
            (key, k if key == "k" else value) for key, value in call.kwargs)})
            if call.name == "partial_channels" else call for call in self.methods)
        return self.model_copy(update={"methods": methods})

    def setting(self, name: str, key: str) -> Value:
        """Setting `key` of the listed method `name`, its default filled in."""
        call = self.method(name)
        if call is None:
            raise KeyError(f"space '{self.name}' does not list the search method '{name}'")
        return method_catalog.resolved(call)[key]

    @property
    def location_spec(self) -> LocationSpec:
        """The `Location` object named by `location`: what every stage asks about it."""
        return LOCATIONS[self.location]

    def span_of(self, key: str) -> Span | None:
        """Where the setting `key` is written, or the space itself if it is not (a default)."""
        return dict(self.setting_spans).get(key, self.span)

    def comments_for(self, key: str) -> Comments:
        return dict(self.setting_comments).get(key, NO_COMMENTS)


class Document(_Node):
    """One file: genotypes and spaces in text order, plus comments after the last item."""

    items: tuple[Union[Genotype, Space], ...] = ()
    closing: Comments = NO_COMMENTS

    @property
    def genotypes(self) -> tuple[Genotype, ...]:
        return tuple(item for item in self.items if isinstance(item, Genotype))

    @property
    def spaces(self) -> tuple[Space, ...]:
        return tuple(item for item in self.items if isinstance(item, Space))

    def genotype(self, name: str | None = None) -> Genotype:
        """The genotype called `name`, or the only one in the file."""
        return _pick(self.genotypes, name, "genotype")

    def space(self, name: str | None = None) -> Space:
        return _pick(self.spaces, name, "space")


def _pick(items, name, label):
    if name is None:
        if len(items) == 1:
            return items[0]
        if not items:
            raise DslError.single(f"the file defines no {label}")
        names = ", ".join(f"'{i.name}'" for i in items)
        raise DslError.single(f"the file defines several {label}s ({names}); choose one by name")
    for item in items:
        if item.name == name:
            return item
    names = ", ".join(f"'{i.name}'" for i in items) or "none"
    raise DslError.single(f"no {label} named '{name}' in the file (it has {names})")


def _duplicate_keys(meta: tuple[Meta, ...]) -> list[Problem]:
    seen: set[str] = set()
    problems = []
    for entry in meta:
        if entry.key in seen:
            problems.append(Problem(f"'{entry.key}' is set twice", entry.span))
        seen.add(entry.key)
    return problems


def derivation_problems(space: Space) -> list[Problem]:
    """Why a search over `space` could not derive a genotype (paper Sec. III-A), if it could not.

    Derivation keeps, per intermediate node, the `keep` strongest incoming edges, and gives each
    kept edge its strongest candidate other than `none`. So every edge needs such a candidate:
    an operation other than `none`, or (only where attentions share the operations' mixture, in
    `mixed_with_operation`) an attention, which derives to ``skip_connect(x) >> attention``. And
    the first node has only two inputs (c_k2, c_k1), so `keep` can be at most 2: with more, the
    first node would keep fewer edges than the others, which no cell in the papers does.
    """
    problems: list[Problem] = []
    if space.location in LOCATIONS:
        problems.extend(space.location_spec.derivation_problems(space))
    if space.keep > len(INPUTS):
        problems.append(Problem(
            f"'keep' is {space.keep}, but the first node has only {len(INPUTS)} inputs "
            f"({', '.join(INPUTS)})", space.span_of("keep"),
            f"each node keeps at most {len(INPUTS)} incoming edges (DARTS keeps 2)"))
    return problems


def _canonical_method(call: Call) -> Call:
    """Every setting, in catalog order, defaults filled in, whole numbers of float settings as
    floats, quantities as their numbers (`600M` as 600000000, `12ms` as 12.0; the printer writes
    them back as 600M and 12ms), optional settings that were not given left out: a space file
    states each method's settings in full, so `methods = [beta_decay]` and `methods =
    [beta_decay(lambda=50)]` are one space and print the same. Unknown names and settings are
    left for `method_problems` to report."""
    entry = method_catalog.METHODS.get(call.name)
    given = dict(call.kwargs)
    if entry is None or set(given) - set(entry.settings) or len(given) != len(call.kwargs):
        return call
    kwargs = []
    for key, parameter in entry.settings.items():
        value = given.get(key, parameter.default)
        if value is None:  # an optional setting not given (budget's macs / params / latency)
            continue
        if parameter.quantity is not None and parameter.problem(key, value) is None:
            value = parameter.convert(value)  # 600M -> 600000000, 12ms -> 12.0
        elif parameter.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs.append((key, value))
    return call if tuple(kwargs) == call.kwargs else call.model_copy(update={"kwargs": tuple(kwargs)})


def method_problems(space: Space) -> list[Problem]:
    """Search methods (`methods.METHODS`) that are unknown, mis-set, listed twice, listed with a
    method they exclude, or missing what they need of the space's candidates or location."""
    problems: list[Problem] = []
    catalog = method_catalog.METHODS
    seen: set[str] = set()
    for call in space.methods:
        entry = catalog.get(call.name)
        if entry is None:
            problems.append(Problem(f"unknown search method '{call.name}'", call.span,
                                    suggest(call.name, catalog) or
                                    "known methods: " + ", ".join(catalog)))
            continue
        if call.name in seen:
            problems.append(Problem(f"search method '{call.name}' is listed twice", call.span))
        seen.add(call.name)
        keys: set[str] = set()
        for key, value in call.kwargs:
            if key not in entry.settings:
                problems.append(Problem(f"unknown setting '{key}' for search method "
                                        f"'{call.name}'", call.span, method_catalog.settings_hint(entry, key)))
            elif key in keys:
                problems.append(Problem(f"setting '{key}' is given twice", call.span))
            else:
                message = method_catalog.setting_problem(call.name, key, entry.settings[key], value)
                if message:
                    problems.append(Problem(message, call.span))
            keys.add(key)
    if problems:
        return problems
    listed = [call.name for call in space.methods]
    for call in space.methods:
        for other in listed:
            if other != call.name and (other in catalog[call.name].excludes
                                       or call.name in catalog[other].excludes):
                if listed.index(other) < listed.index(call.name):
                    problems.append(Problem(
                        f"search method '{call.name}' cannot be combined with '{other}'",
                        call.span, "list only one of them"))
    for call in space.methods:
        requires = catalog[call.name].requires
        if requires is not None:
            problems.extend(requires(space, call))
    return problems


def cell_problems(cell: Cell) -> list[Problem]:
    """Every structural problem of a cell, in text order."""
    problems: list[Problem] = []
    all_names = {node.name for node in cell.nodes}
    defined: set[str] = set(INPUTS)
    for node in cell.nodes:
        if node.name in RESERVED:
            problems.append(Problem(f"'{node.name}' is reserved and cannot name a node", node.span,
                                    "name intermediate nodes n0, n1, ..."))
        elif node.name in defined:
            problems.append(Problem(f"node '{node.name}' is defined twice", node.span))
        if not node.edges:
            problems.append(Problem(f"node '{node.name}' has no edges", node.span,
                                    "a node sums one or more edges, e.g. sep_conv_3x3(c_k1)"))
        for edge in node.edges:
            if edge.input in defined:
                continue
            if edge.input == node.name:
                problems.append(Problem(f"node '{node.name}' takes its own output as input (a cycle)",
                                        edge.span, "an edge may only read the cell inputs or earlier nodes"))
            elif edge.input in all_names:
                problems.append(Problem(f"node '{edge.input}' is used before it is defined", edge.span,
                                        "define nodes before the nodes that read them (cells are acyclic)"))
            else:
                known = ", ".join(f"'{n}'" for n in sorted(defined, key=_input_order))
                problems.append(Problem(f"unknown input '{edge.input}'", edge.span,
                                        f"inputs here are {known}"))
        defined.add(node.name)
    intermediate = [node.name for node in cell.nodes]
    seen: set[str] = set()
    if not cell.output.nodes:
        problems.append(Problem("the output concatenates no nodes", cell.output.span))
    for position, name in enumerate(cell.output.nodes):
        span = cell.output.span_of(position)
        if name in seen:
            problems.append(Problem(f"node '{name}' is concatenated twice", span))
        elif name not in intermediate:
            hint = "the output concatenates intermediate nodes"
            if intermediate:
                hint += ": " + ", ".join(f"'{n}'" for n in intermediate)
            problems.append(Problem(f"concat of unknown node '{name}'", span, hint))
        seen.add(name)
    return problems


def _input_order(name: str) -> tuple[int, str]:
    return (INPUTS.index(name), "") if name in INPUTS else (2, name)
