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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attdarts.language.errors import DslError, Problem, Span, suggest
from attdarts.language.locations import ATTENTIONS as ATTENTION_MIXTURE
from attdarts.language.locations import LOCATIONS
from attdarts.language.locations import OPERATIONS as OPERATION_MIXTURE
from attdarts.language.locations import Location as LocationSpec
from attdarts.language.methods import OPTIONS as METHOD_OPTIONS

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


NO_COMMENTS = Comments()


class Call(_Node):
    """An operation or attention by registry name, with keyword arguments in canonical order."""

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


# Intermediate nodes of a search space. A supernet cell has n(n+3)/2 mixed edges (14 at the
# papers' 4); past this limit a typing slip would build a supernet for minutes without a word.
MAX_SPACE_NODES = 16


class Space(_Node):
    """A search space: candidate operations and attentions, cell size, and how attention is placed.

    `location` is one of the six attention locations of the authors' code (`after_every` is the
    paper's); `mixing` is `sum` (Att-DARTS-S, Eq. 10) or `product` (Att-DARTS-P, Eq. 17).
    The fields after `mixing` are search methods (`attdarts.language.methods.OPTIONS`); their
    defaults switch them off.
    """

    name: str
    meta: tuple[Meta, ...] = ()
    operations: tuple[Call, ...]
    attentions: tuple[Call, ...] = ()
    nodes: int = 4
    keep: int = 2
    location: str = "after_every"  # a key of locations.LOCATIONS
    mixing: Mixing = "sum"
    partial_channels: int = 1
    edge_normalisation: bool = False
    max_skip_connect: int | None = None
    max_identity: int | None = None
    stop_at_skips: int | None = None
    auxiliary_skip: Literal["off", "linear", "cosine"] = "off"
    auxiliary_identity: Literal["off", "linear", "cosine"] = "off"
    beta_decay: float = 0.0
    beta_decay_schedule: Literal["linear", "constant"] = "linear"
    smoothing: float = 0.0
    setting_comments: tuple[tuple[str, Comments], ...] = Field(default=(), exclude=False)
    setting_spans: tuple[tuple[str, Span], ...] = Field(default=(), exclude=True, repr=False)
    comments: Comments = NO_COMMENTS
    closing: Comments = NO_COMMENTS

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
            problems = derivation_problems(self)
        if problems:
            raise DslError(problems)
        return self

    @property
    def methods(self) -> dict[str, object]:
        """The search-method options that differ from their default, in table order."""
        return {key: getattr(self, key) for key, option in METHOD_OPTIONS.items()
                if getattr(self, key) != option.default}

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


def method_problems(space: Space) -> list[Problem]:
    """Search-method options (`methods.OPTIONS`) that this space's candidates or location defeat."""
    problems: list[Problem] = []
    for key, option in METHOD_OPTIONS.items():  # ranges, for spaces built without the text
        value = getattr(space, key)
        if option.kind in ("int", "float") and value is not None:
            message = option.convert(value)[1]
            if message:
                problems.append(Problem(message, space.span_of(key)))
    if problems:
        return problems
    location = space.location_spec
    operations = [call.name for call in space.operations]
    attentions = [call.name for call in space.attentions]
    separate = location.edge_mixture == OPERATION_MIXTURE
    if space.max_skip_connect is not None and not separate:
        problems.append(Problem(
            f"'max_skip_connect' needs operations chosen apart from attentions; location "
            f"'{space.location}' mixes them in one softmax", space.span_of("max_skip_connect"),
            "use it with after_every, end, after_every_and_end or no_attention"))
    elif space.max_skip_connect is not None and not set(operations) - {"none", "skip_connect"}:
        problems.append(Problem(
            f"'max_skip_connect' is {space.max_skip_connect}, but the space has no operation "
            "other than none and skip_connect to put in place of an extra skip",
            space.span_of("max_skip_connect"), "add an operation such as sep_conv_3x3"))
    if space.stop_at_skips is not None and "skip_connect" not in operations:
        problems.append(Problem(
            "'stop_at_skips' counts skip_connect, which the space does not list",
            space.span_of("stop_at_skips"), "add skip_connect to the operations or drop the option"))
    if space.max_identity is not None:
        if location.then != ATTENTION_MIXTURE or "identity" not in attentions:
            problems.append(Problem(
                "'max_identity' caps edges whose attention derives to identity; it needs "
                "'identity' among the attentions and an attention mixture after every edge",
                space.span_of("max_identity"),
                "use location after_every or after_every_and_end with identity listed"))
        elif len(attentions) < 2:
            problems.append(Problem(
                "'max_identity' needs an attention other than identity to put in its place",
                space.span_of("max_identity"), "add an attention such as se"))
    if space.auxiliary_identity != "off" and not (
            location.then == ATTENTION_MIXTURE or location.output_attention):
        problems.append(Problem(
            f"'auxiliary_identity' adds to attention mixtures; location '{space.location}' has "
            "none", space.span_of("auxiliary_identity"),
            "use location after_every, end or after_every_and_end"))
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
