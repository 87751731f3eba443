"""The names the DSL knows, and their keyword arguments, without importing torch.

The front end (`check`, `fmt`, `import`) validates names against this catalog so it can start
fast. Each name has one `Entry`: its keyword arguments, the dotted path of its torch factory, its
label in pictures and its spelling in the authors' files. `attdarts.networks.registry` imports
the factory when a network is built; a test resolves every path.
Candidate order in a search is taken from the space declaration, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Parameter:
    """A keyword argument: its type, default, and (for words) the allowed choices; numbers lie
    between `minimum` and `maximum` (None: unbounded on that side)."""

    kind: type
    default: int | float | str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


_REDUCTION = Parameter(int, 16, minimum=1)
_OPERATIONS = "attdarts.networks.operations"
_ATTENTIONS = "attdarts.networks.attentions"


class DuplicateNameError(RuntimeError):
    """Two entries registered under one name: a programming error, raised at import time."""


@dataclass(frozen=True)
class Entry:
    """One operation or attention module: everything every stage needs to know about a name.

    `parameters` are its keyword arguments in text order; `factory` is a dotted path
    ("package.module:function") imported only when a network is built, so this table stays
    torch-free. `label` is the paper's name in rendered graphs (None: the DSL name);
    `authors_name` and `authors_kwargs` are its spelling in the authors' genotype files
    (ATTN_PRIMITIVES; None: not in their code or the same as `name` for operations);
    `droppable_kwargs` are keyword arguments an export to their format may drop;
    `additive` attentions add to their input instead of multiplying it by a mask, so they cannot
    take part in Att-DARTS-P's log-space product of masks (paper, Eq. 17).
    """

    name: str
    kind: str  # "operation" | "attention"
    parameters: dict[str, Parameter] = field(default_factory=dict)
    factory: str = ""
    label: str | None = None
    authors_name: str | None = None
    authors_kwargs: tuple[tuple[str, int | float | str], ...] = ()
    droppable_kwargs: frozenset[str] = frozenset()
    additive: bool = False


def _operation(name: str) -> Entry:
    return Entry(name, "operation", factory=f"{_OPERATIONS}:{name}")


OPERATIONS: dict[str, Entry] = {entry.name: entry for entry in (
    _operation("none"),
    _operation("max_pool_3x3"),
    _operation("avg_pool_3x3"),
    _operation("skip_connect"),
    _operation("sep_conv_3x3"),
    _operation("sep_conv_5x5"),
    _operation("sep_conv_7x7"),
    _operation("dil_conv_3x3"),
    _operation("dil_conv_5x5"),
    _operation("conv_7x1_1x7"),
)}

ATTENTIONS: dict[str, Entry] = {entry.name: entry for entry in (
    Entry("identity", "attention", factory=f"{_ATTENTIONS}:identity", authors_name="Identity"),
    Entry("se", "attention", {"reduction": _REDUCTION}, factory=f"{_ATTENTIONS}:se",
          label="SE", authors_name="SE"),
    Entry("bam", "attention", {
        "reduction": _REDUCTION,
        "dilation": Parameter(int, 4, minimum=1),
        "combine": Parameter(str, "sum", choices=("sum", "product")),
    }, factory=f"{_ATTENTIONS}:bam", label="BAM", authors_name="BAM",
        # the authors' BAM multiplies its gates and has no switch: both combines export as 'BAM'
        authors_kwargs=(("combine", "product"),), droppable_kwargs=frozenset({"combine"})),
    Entry("cbam", "attention", {"reduction": _REDUCTION}, factory=f"{_ATTENTIONS}:cbam",
          label="CBAM", authors_name="CBAM"),
    Entry("ge_theta_plus", "attention", {"reduction": _REDUCTION},
          factory=f"{_ATTENTIONS}:ge_theta_plus", label="GE-θ<sup>+</sup>",
          authors_name="GE_theta-plus"),
    Entry("double_attention", "attention", {"reduction": Parameter(int, 4, minimum=1)},
          factory=f"{_ATTENTIONS}:double_attention", label="A<sup>2</sup>",
          authors_name="DoubleAttention", additive=True),
)}

_TABLES = {"operation": OPERATIONS, "attention": ATTENTIONS}


def register(entry: Entry) -> Entry:
    """Add an operation or attention module to the catalog (a plug-in's one line).

    Raises DuplicateNameError when the name is taken in either table: a DSL token names one
    thing, and the transform's hints tell operations and attentions apart by name.
    """
    if entry.kind not in _TABLES:
        raise ValueError(f"an entry's kind is 'operation' or 'attention', not {entry.kind!r}")
    if entry.name in OPERATIONS or entry.name in ATTENTIONS:
        raise DuplicateNameError(f"{entry.kind} {entry.name!r} is already in the catalog")
    _TABLES[entry.kind][entry.name] = entry
    return entry


# The paper's candidate sets, in the order both reference codes use.
PAPER_OPERATIONS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
PAPER_ATTENTIONS = ("identity", "se", "bam", "cbam", "ge_theta_plus", "double_attention")

MIXINGS = ("sum", "product")

