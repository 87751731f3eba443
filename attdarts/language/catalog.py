"""The names the DSL knows, and their keyword arguments, without importing torch.

The front end (`check`, `fmt`, `import`) validates names against this catalog so it can start
fast. Each name has one `Entry`: its keyword arguments, the dotted path of its torch factory, its
label in pictures, its spelling in the authors' files and its origin (attdarts or the plug-in that
added it, `attdarts.plugins`). `attdarts.networks.registry` imports the factory when a network is
built; a test resolves every path.
Candidate order in a search is taken from the space declaration, not from here.
"""

from __future__ import annotations

import math

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from attdarts.language.quantities import COUNT, parse_quantity


@dataclass(frozen=True)
class Parameter:
    """A keyword argument: its type, default, and (for words) the allowed choices; numbers lie
    between `minimum` and `maximum` (None: unbounded on that side).

    `quantity` ("count" or "latency", `attdarts.language.quantities`) makes it a quantity
    written with a suffix or unit (`600M`, `12ms`): the text or a plain count is accepted and
    `convert` gives the number (an int count, or milliseconds). A default of None means the
    setting is optional and absent unless given (a search method's `budget(macs=...)`).
    """

    kind: type
    default: int | float | str | None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    quantity: str | None = None

    def problem(self, name: str, value: object) -> str | None:
        """Why `value` cannot be this parameter (one line naming it as `name`, e.g. "'k' of
        partial_channels"), or None. The one check of every keyword argument and setting."""
        if self.quantity is not None:
            try:
                self.convert(value)
            except ValueError:
                return f"{name} must be {self.range()}, got {value!r}"
            return None
        if self.kind is str:
            if self.choices and value not in self.choices:
                return f"{name} must be one of {', '.join(self.choices)}, got {value!r}"
            return None
        whole = self.kind is int
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (whole and not isinstance(value, int)) or not math.isfinite(value):
            noun = "a whole number" if whole else "a number"
            return f"{name} must be {noun}, {self.range()}, got {value!r}"
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{name} is {value}; it must be {self.range()}"
        return None

    def convert(self, value: object) -> int | float | str:
        """The value a valid setting stands for: a quantity's number (`problem` says why one
        is not valid: ValueError here), any other value as it is."""
        if self.quantity is None:
            return value  # type: ignore[return-value]
        if isinstance(value, str):
            return parse_quantity(value, self.quantity)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or not math.isfinite(value):
            raise ValueError(f"not a {self.quantity}: {value!r}")
        if self.quantity != COUNT:
            return float(value)  # milliseconds (a space's text writes the unit: 12ms)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not a count: {value!r}")
        return int(value)

    def range(self) -> str:
        """The values allowed, in words: "from 1 to 64", "at least 0", "any value"."""
        if self.quantity is not None:
            return ("a count, e.g. 600M, 3.5M or 250k" if self.quantity == COUNT
                    else "a latency with its unit, e.g. 12ms or 800us")
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"from {_number(low)} to {_number(high)}"
        if high is not None:
            return f"at most {_number(high)}"
        return f"at least {_number(low)}" if low is not None else "any value"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_REDUCTION = Parameter(int, 16, minimum=1)
_OPERATIONS = "attdarts.networks.operations"
_ATTENTIONS = "attdarts.networks.attentions"
BUILT_IN = "attdarts"  # the origin of the entries below


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
    `check` receives a call's keyword values (defaults filled in) and returns what is wrong with
    them together (one message), or None: the rules a `Parameter` cannot state, such as an odd
    kernel size; the transform reports it at the call. `origin` is "attdarts" for the built-in
    entries, a plug-in's name for the ones it adds.
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
    check: Callable[[dict[str, int | float | str]], str | None] | None = None
    origin: str = BUILT_IN


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


def _attention(name: str, parameters: dict[str, Parameter] | None = None, **fields) -> Entry:
    """A built-in attention: its factory is `name` in attdarts/networks/attentions/NAME.py."""
    return Entry(name, "attention", parameters or {},
                 factory=f"{_ATTENTIONS}.{name}:{name}", **fields)


def _odd_kernel(values: dict) -> str | None:
    size = values["kernel_size"]
    if size != 0 and size % 2 == 0:
        return (f"'kernel_size' must be odd (or 0 for ECA-Net's rule from the channels), "
                f"got {size}")
    return None


def _positive_lambda(values: dict) -> str | None:
    if not values["e_lambda"] > 0:
        return ("'e_lambda' must be positive (SimAM divides by v + lambda), "
                f"got {values['e_lambda']}")
    return None


ATTENTIONS: dict[str, Entry] = {entry.name: entry for entry in (
    _attention("identity", authors_name="Identity"),
    _attention("se", {"reduction": _REDUCTION}, label="SE", authors_name="SE"),
    _attention("bam", {
        "reduction": _REDUCTION,
        "dilation": Parameter(int, 4, minimum=1),
        "combine": Parameter(str, "sum", choices=("sum", "product")),
    }, label="BAM", authors_name="BAM",
        # the authors' BAM multiplies its gates and has no switch: both combines export as 'BAM'
        authors_kwargs=(("combine", "product"),), droppable_kwargs=frozenset({"combine"})),
    _attention("cbam", {"reduction": _REDUCTION}, label="CBAM", authors_name="CBAM"),
    _attention("ge_theta_plus", {"reduction": _REDUCTION}, label="GE-θ<sup>+</sup>",
               authors_name="GE_theta-plus"),
    _attention("double_attention", {"reduction": Parameter(int, 4, minimum=1)},
               label="A<sup>2</sup>", authors_name="DoubleAttention", additive=True),
    # newer than Att-DARTS, not in its authors' code (no authors_name)
    # kernel_size 0: ECA-Net's Eq. 12 from the channels (gamma 2, b 1); their code's default is 3
    _attention("eca", {"kernel_size": Parameter(int, 0, minimum=0)}, label="ECA",
               check=_odd_kernel),
    _attention("coord_attention", {"reduction": Parameter(int, 32, minimum=1),
                                   "minimum_width": Parameter(int, 8, minimum=1)},
               label="CA"),
    _attention("simam", {"e_lambda": Parameter(float, 1e-4)}, label="SimAM",
               check=_positive_lambda),
)}

_TABLES = {"operation": OPERATIONS, "attention": ATTENTIONS}

DSL_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")  # lower_snake: a DSL token
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
_LOADING: list[str] = []  # the plug-in being loaded (attdarts.plugins), innermost last


@contextlib.contextmanager
def credited_to(origin: str) -> Iterator[None]:
    """Entries registered inside (by any registration function that calls `plugin_origin`) are
    `origin`'s: the plug-in loader wraps each plug-in's import in it."""
    _LOADING.append(origin)
    try:
        yield
    finally:
        _LOADING.pop()


def plugin_origin(origin: str = BUILT_IN) -> str:
    """`origin`, or the name of the plug-in being loaded when `origin` is the default: an entry a
    plug-in registers is its plug-in's without saying so (any registration function may call
    this)."""
    return _LOADING[-1] if origin == BUILT_IN and _LOADING else origin


def register(entry: Entry) -> Entry:
    """Add an operation or attention module to the catalog (a plug-in's one call per name).

    The name must be a lower_snake DSL token and free in both tables (a DSL token names one
    thing, and the transform's hints tell operations and attentions apart by name): a taken name
    raises DuplicateNameError naming the origin of the entry that holds it. An entry registered
    while a plug-in loads gets that plug-in as its origin. Returns the entry as stored.
    """
    if entry.kind not in _TABLES:
        raise ValueError(f"an entry's kind is 'operation' or 'attention', not {entry.kind!r}")
    if not DSL_NAME.match(entry.name):
        raise ValueError(f"{entry.kind} name {entry.name!r} is not a lower_snake DSL name")
    if not _FACTORY.match(entry.factory):
        raise ValueError(f"{entry.kind} {entry.name!r}: factory {entry.factory!r} is not a "
                         "dotted path 'package.module:function'")
    for key, parameter in entry.parameters.items():
        if parameter.kind not in (int, float, str) or not DSL_NAME.match(key):
            raise ValueError(f"{entry.kind} {entry.name!r}: keyword {key!r} must be a lower_snake "
                             "name of type int, float or str")
    entry = replace(entry, origin=plugin_origin(entry.origin))
    taken = OPERATIONS.get(entry.name) or ATTENTIONS.get(entry.name)
    if taken is not None:
        raise DuplicateNameError(
            f"{entry.kind} {entry.name!r} of {entry.origin!r} refused: the {taken.kind} "
            f"{taken.name!r} is already in the catalog (from {taken.origin!r})")
    _TABLES[entry.kind][entry.name] = entry
    return entry


# The paper's candidate sets, in the order both reference codes use.
PAPER_OPERATIONS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
PAPER_ATTENTIONS = ("identity", "se", "bam", "cbam", "ge_theta_plus", "double_attention")

MIXINGS = ("sum", "product")



# ---------------------------------------------------------------------------------------------
# Datasets: the names `--dataset` takes (besides folder:PATH), torch-free like the tables above


@dataclass(frozen=True)
class Dataset:
    """A dataset a run can name. `factory` ("package.module:function") is imported when the data
    is loaded and called as ``factory(*, train, root, download, workers)``: `train` picks the
    split, `root` is --data-dir (default ./data), `download` whether fetching is allowed,
    `workers` threads for decoding. It returns the whole split in memory as
    `attdarts.runs.data.ImageTensors` (uint8 images, labels, classes, mean and std), which the
    search splits and the loaders augment like CIFAR's. `summary` is its line in README and help.
    """

    name: str
    factory: str
    summary: str = ""
    origin: str = BUILT_IN


_DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_LOADERS = "attdarts.runs.data.datasets"

DATASETS: dict[str, Dataset] = {entry.name: entry for entry in (
    Dataset("cifar10", f"{_LOADERS}:load_cifar10", "CIFAR-10 (downloaded into --data-dir)"),
    Dataset("cifar100", f"{_LOADERS}:load_cifar100", "CIFAR-100 (downloaded into --data-dir)"),
    Dataset("imagenet", f"{_LOADERS}:load_imagenet", "ImageNet, streamed from --data-dir"),
    Dataset("cifar10-mini", f"{_LOADERS}:load_cifar10_mini",
            "the CIFAR-10 subset shipped inside the package"),
    Dataset("synthetic", f"{_LOADERS}:load_synthetic", "random images and labels, smoke runs only"),
)}
FOLDER = "folder"  # folder:PATH, an ImageFolder: a form, not a name a plug-in may take


def register_dataset(entry: Dataset) -> Dataset:
    """Add a dataset (a plug-in's one call per name): a lower-case name (letters, digits, '-',
    '_'), not taken; a taken name raises DuplicateNameError naming the origin that holds it. As
    for `register`, an entry added while a plug-in loads gets that plug-in as its origin."""
    if not _DATASET_NAME.match(entry.name) or entry.name == FOLDER:
        raise ValueError(f"dataset name {entry.name!r} must be lower-case letters, digits, '-' "
                         f"or '_' (and not {FOLDER!r})")
    if not _FACTORY.match(entry.factory):
        raise ValueError(f"dataset {entry.name!r}: factory {entry.factory!r} is not a dotted "
                         "path 'package.module:function'")
    entry = replace(entry, origin=plugin_origin(entry.origin))
    taken = DATASETS.get(entry.name)
    if taken is not None:
        raise DuplicateNameError(f"dataset {entry.name!r} of {entry.origin!r} refused: the dataset "
                                 f"{taken.name!r} is already registered (from {taken.origin!r})")
    DATASETS[entry.name] = entry
    return entry
