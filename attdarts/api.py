"""The public functions: the front end (fmt, check over files) and the Python API over the
heavier stages (`create_network`, `load_network`, `search`, `train`, `export_model`), which the
package also offers as `attdarts.create_network`, ... The CLI is a shell over these.

torch is imported inside the heavy functions only, so `import attdarts.api` (and `attdarts fmt`,
`check`, ...) stays free of it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attdarts import recipes
from attdarts.files import FileError, WriteError, atomic_write_text, has_bom, shipped
from attdarts.language.errors import DslError, Problem, close_names
from attdarts.language.ir import Genotype, Space
from attdarts.language.printer import format_document
from attdarts.language.transform import parse_file, parse_text, read_genotype, read_source

GENOTYPE_SUFFIXES = (".geno",)


def expand_paths(paths) -> list[Path]:
    """Files as given; directories expand to the genotype files under them, sorted."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in GENOTYPE_SUFFIXES and p.is_file()))
        else:
            files.append(path)
    return files


def format_text(text: str, path: str | None = None) -> str:
    """Canonical text for `text`, verified like black: the output must parse back to the same IR
    (comments included) and format to itself; otherwise nothing is returned for writing."""
    document = parse_text(text, path)
    if not document.items:
        raise _no_items(path)
    formatted = format_document(document)
    again = parse_text(formatted, path)
    if again.model_dump() != document.model_dump() or again != document:
        raise DslError.single("internal error: formatting changed the meaning of the file; "
                              "nothing was written (please report this)").located(path, None)
    if format_document(again) != formatted:
        raise DslError.single("internal error: formatting is not stable; nothing was written "
                              "(please report this)").located(path, None)
    return formatted


@dataclass(frozen=True)
class FormatResult:
    path: Path
    changed: bool


def format_file(path: str | Path, *, write: bool = True) -> FormatResult:
    """Format one file in place (atomically) if it is not already canonical.

    The canonical form has no byte-order mark: a file that starts with one is rewritten without
    it. A symbolic link is written through (the file it points to is formatted, the link stays);
    the file keeps its permission bits. A read-only file is refused with `WriteError`, as is one
    that cannot be written (full disk, read-only filesystem); the file is then left untouched.
    """
    path = Path(path)
    text = read_source(path)
    formatted = format_text(text, str(path))
    changed = formatted != text or has_bom(path)
    if changed and write:
        if _read_only(path):
            raise WriteError(f"cannot write {path}: the file is read-only (make it writable to format it)")
        atomic_write_text(path, formatted)
    return FormatResult(path, changed)


def _read_only(path: Path) -> bool:
    """No write permission for its owner, or none for us (root may write anything: ask the mode)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not mode & stat.S_IWUSR or not os.access(path, os.W_OK)


@dataclass(frozen=True)
class CheckResult:
    """What `check` found in one file: its problems (none when the file is fine) and how many
    genotypes and spaces it defines (0 when it does not parse)."""

    path: Path
    errors: tuple[DslError, ...] = ()
    genotypes: int = 0
    spaces: int = 0


def check_path(path: str | Path) -> CheckResult:
    """Check one file: every problem as a located error, and what it defines."""
    try:
        document = parse_file(path)
    except DslError as error:
        return CheckResult(Path(path), (error,))
    if not document.items:
        return CheckResult(Path(path), (_no_items(path),))
    return CheckResult(Path(path), (), len(document.genotypes), len(document.spaces))


def check_file(path: str | Path) -> list[DslError]:
    """Every problem in one file, as located errors (empty when the file is fine)."""
    return list(check_path(path).errors)


def _no_items(path: str | Path | None) -> DslError:
    return DslError([Problem("the file defines no genotype or space",
                             hint="start with 'genotype NAME {' or 'space NAME {'")],
                    None if path is None else str(path), None)


def empty_directories(paths) -> list[Path]:
    """The directories among `paths` that hold no genotype file (fmt and check say so)."""
    return [Path(path) for path in paths if Path(path).is_dir() and not expand_paths([path])]


# ---------------------------------------------------------------------------------------------
# The Python API over networks and runs (torch imported on first call)

class GenotypeNotFound(FileError):
    """A genotype given by name that is neither a file nor in the zoo; the message lists the zoo."""


def zoo_dir(kind: str = "genotype") -> Path:
    """The zoo's folder: `genotypes/` (kind "genotype") or `genotypes/spaces/` (kind "space"), at
    the top of a checkout or inside the installed package (the wheel ships it there)."""
    if kind not in ("genotype", "space"):
        raise ValueError(f"kind must be 'genotype' or 'space', got {kind!r}")
    folder = shipped("genotypes")
    return folder if kind == "genotype" else folder / "spaces"


def zoo_names(kind: str = "genotype") -> list[str]:
    """Names of the zoo's genotypes (`genotypes/*.geno`) or spaces (`genotypes/spaces/*.geno`)."""
    return sorted(path.stem for path in zoo_dir(kind).glob("*.geno"))


def zoo_file(name: str | os.PathLike, kind: str = "genotype") -> Path:
    """A `.geno` path as given (or any path that exists), or the zoo's file of that name; an
    unknown name raises `GenotypeNotFound`, which lists the zoo and suggests the closest name."""
    path = Path(name)
    if path.suffix == ".geno" or path.exists():
        return path
    folder = zoo_dir(kind)
    if (folder / f"{name}.geno").is_file():
        return folder / f"{name}.geno"
    names = zoo_names(kind)
    close = close_names(str(name), names)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise GenotypeNotFound(f"'{name}' is neither a {kind} file nor a zoo {kind} "
                           f"({', '.join(names) or 'none found in ' + str(folder)}){hint}")


def resolve_genotype(genotype: Genotype | str | os.PathLike, name: str | None = None) -> Genotype:
    """An `ir.Genotype` as given, the genotype of a `.geno` file (`name` picks one of several), or
    a zoo genotype by name ("darts_v2", "att_darts", ...)."""
    if isinstance(genotype, Genotype):
        return genotype
    return read_genotype(zoo_file(genotype, "genotype"), name)


def create_network(genotype: Genotype | str | os.PathLike, dataset: str = "cifar10",
                   channels: int | None = None, layers: int | None = None,
                   auxiliary: bool = False, **options: Any):
    """The discrete network (an `nn.Module`, freshly initialised) of a genotype: a zoo name, a
    `.geno` path or an `ir.Genotype`.

    `dataset` is "cifar10", "cifar100" or "imagenet"; `channels` and `layers` default to the
    training recipe of that dataset (`recipes.TRAIN`: C=36, L=20 for CIFAR; C=48, L=14 for
    ImageNet). `create_network("darts_v2")` has the 3,349,342 weights DARTS reports. `options`
    go to `compile_network` (num_classes, in_chans, input_size, drop_path_rule, grouped).
    `network(images)` returns the logits; `network(images, aux=True)` returns
    `(logits, aux_logits)`, aux_logits None in eval mode or without the head.
    """
    from attdarts.networks.network import compile_network

    recipe = recipes.TRAIN["imagenet" if dataset == "imagenet" else "cifar"]
    return compile_network(resolve_genotype(genotype), dataset=dataset,
                           channels=recipe["channels"] if channels is None else channels,
                           layers=recipe["layers"] if layers is None else layers,
                           auxiliary=auxiliary, **options)


@dataclass(frozen=True)
class LoadedNetwork:
    """A trained network (eval mode) with its genotype, its `TrainConfig`, the epoch its
    checkpoint was written at and its `Preprocessing` (mean, std, input size, class names);
    unpacks as `network, genotype, config = load_network(...)`."""

    network: Any
    genotype: Genotype
    config: Any
    epoch: int
    checkpoint: Path
    preprocessing: Any = None

    def __iter__(self):
        return iter((self.network, self.genotype, self.config))


def load_network(checkpoint: str | os.PathLike, *, which: str = "last",
                 device: str | None = None) -> LoadedNetwork:
    """The trained network of a training run: a run directory (its `last.pt`, or `best.pt` with
    `which="best"`) or a checkpoint file. A missing, truncated or foreign file (a search's
    checkpoint, any other file) raises `CheckpointError` with a message for a user."""
    from attdarts.runs import runtime, train as training
    from attdarts.runs.checkpoints import CheckpointError
    from attdarts.runs.predict import checkpoint_preprocessing
    from attdarts.runs.train.resume import load_run_checkpoint, stored_genotype

    path = Path(checkpoint)
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    if path.is_dir():
        if not (path / f"{which}.pt").is_file() and (path / "checkpoint.pt").is_file():
            raise CheckpointError(f"{path} is a search run, not a training run; train its "
                                  f"genotype first: attdarts train {path / 'genotype.geno'}")
        path = path / f"{which}.pt"
    state = load_run_checkpoint(path)
    genotype = stored_genotype(state, path)
    try:
        config = training.TrainConfig(**state["config"])
        model = training.build_model(genotype, dict(state["model_config"]))
        model.load_state_dict(runtime.strip_module_prefix(state["model"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: the checkpoint does not hold a usable network ({reason})") from None
    preprocessing = checkpoint_preprocessing(state, path, model)
    if device is not None:
        model.to(device)
    return LoadedNetwork(model.eval(), genotype, config, int(state.get("epoch", 0)), path,
                         preprocessing)


def search(space: Space | str | os.PathLike, *, out: str | os.PathLike | None = None,
           seeds: list[int] | None = None, recipe: str = "paper", device: str | None = None,
           progress: bool = False, threads: int | None = None, **settings: Any):
    """Run an architecture search; return its `SearchResult` (run_dir, seed, genotype, epochs,
    metrics of the last epoch), or one per seed with `seeds`. `space` is a space file, a zoo space
    name ("att_darts", "darts", ...) or an `ir.Space`; `settings` are `SearchConfig` fields
    (epochs, batch_size, channels, layers, dataset, lr, ...) over the `recipe`'s defaults.
    `out` defaults to runs/search-SPACE-TIME; an `ir.Space` is written there as space.geno, the
    space file of record. What the command line refuses is refused here too, before anything is
    written (`attdarts.runs.search.launch` is the one path of both). `threads` sets torch's CPU
    threads for the run; None chooses them as `attdarts search` does (`attdarts.runs.threads`);
    the count in force before is restored afterwards."""
    from attdarts.runs import search as searching, threads as threads_rule

    searched = None
    if isinstance(space, Space):
        searched = space
        out = Path(out) if out is not None else searching.default_run_dir(space)
        path = out / "space.geno"  # written by the run, once everything is checked
        settings.setdefault("space", space.name)
    else:
        path = zoo_file(space, "space")
    config = searching.recipe_config(recipe, space_file=str(path.resolve()), **settings)
    with threads_rule.using(threads, threads_rule.step_units("search", config.model_dump())):
        return searching.launch(config, out, seeds=seeds, device=device, progress=progress,
                                space=searched)


def train(genotype: Genotype | str | os.PathLike, *, out: str | os.PathLike | None = None,
          device: str | None = None, progress: bool = False, threads: int | None = None,
          **settings: Any):
    """Train a genotype (zoo name, `.geno` path or `ir.Genotype`) from scratch; return its
    `TrainResult` (run_dir, best_top1, best_epoch, last_top1, parameters, history, model).
    `settings` are `TrainConfig` fields (dataset, epochs, batch_size, channels, layers, lr,
    seed, ...) over the paper's recipe for the dataset; `out` defaults to runs/NAME-DATASET-TIME.
    `threads` as for `search`."""
    from attdarts.runs import threads as threads_rule, train as training

    with threads_rule.using(threads, threads_rule.step_units("train", settings)):
        return training.launch(resolve_genotype(genotype), settings, out=out, device=device,
                               progress=progress)


def export_model(source: str | os.PathLike | Genotype, output: str | os.PathLike, *,
                 batch: int | None = None, exporter: str = "torchscript", dataset: str = "cifar10",
                 channels: int | None = None, layers: int | None = None,
                 normalise_in_graph: bool = False):
    """Write the network of a training checkpoint (a run directory or a `.pt` file) or of a
    genotype (zoo name, `.geno` path, `ir.Genotype`: freshly initialised weights, sized by
    `dataset`, `channels`, `layers`) to `output` (.onnx or .pt2), as deployed: eval mode, no
    drop path, no auxiliary head, logits only. The file's metadata holds the preprocessing (mean,
    std, input size, resize, layout, class names: the checkpoint's, or the dataset's for a
    genotype); `normalise_in_graph` puts the normalisation into the graph, which then takes RGB
    in 0..1. Returns the exported `InferenceNetwork`."""
    from attdarts.networks.export import export_format, export_network
    from attdarts.runs.predict import dataset_preprocessing

    export_format(output)  # an unknown suffix is refused before anything is built
    path = None if isinstance(source, Genotype) else Path(source)
    if path is not None and _is_checkpoint(path):
        loaded = load_network(path)
        network, preprocessing = loaded.network.cpu(), loaded.preprocessing
    else:
        network = create_network(source, dataset, channels, layers)
        preprocessing = dataset_preprocessing(dataset, network)
    return export_network(network, output, batch=batch, exporter=exporter,
                          preprocessing=preprocessing, normalise_in_graph=normalise_in_graph)


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".pt"


def predict(model: str | os.PathLike, images, *, top_k: int = 5):
    """The `top_k` most probable classes of each image file (any format Pillow reads), as
    `Prediction`s (image, top: `ClassScore`s with index, name (None without class names) and
    probability). `model` is a training run directory, a checkpoint (.pt) or an exported .onnx
    or .pt2 file; images are resized and cropped to its input as its preprocessing says. A
    file that cannot be used raises `PredictError` (or `CheckpointError`) naming it."""
    from attdarts.runs import predict as predicting

    path = Path(model)
    if path.suffix.lower() in (".onnx", ".pt2"):
        predictor = predicting.exported_predictor(path)
    elif _is_checkpoint(path):
        loaded = load_network(path, device="cpu")
        predictor = predicting.network_predictor(loaded.network, loaded.preprocessing, str(path))
    else:
        raise predicting.PredictError(
            f"{path}: not a model; expected a training run directory, a checkpoint (.pt) or an "
            f"exported .onnx or .pt2 file")
    return predicting.predict(predictor, [Path(image) for image in images], top_k)


def cost_table(space: Space | str | os.PathLike, *, dataset: str = "cifar10",
               channels: int | None = None, layers: int | None = None, latency: Any = None,
               output: str | os.PathLike | None = None, progress: Any = None):
    """The cost table (`attdarts.networks.costs.CostTable`) of a space's genotypes at the final
    size: a space file, a zoo space name ("att_darts", "darts", ...) or an `ir.Space`.
    `channels` and `layers` default to the training recipe of `dataset`; `latency` is a
    `LatencySettings` (None: counts only). Written as JSON to `output` when given."""
    from attdarts.networks.cost_meter import build_cost_table
    from attdarts.networks.costs import write_cost_table

    if not isinstance(space, Space):
        space = parse_file(zoo_file(space, "space")).space()
    recipe = recipes.TRAIN["imagenet" if dataset == "imagenet" else "cifar"]
    table = build_cost_table(space, dataset=dataset,
                             channels=recipe["channels"] if channels is None else channels,
                             layers=recipe["layers"] if layers is None else layers,
                             latency=latency, progress=progress or (lambda message: None))
    if output is not None:
        write_cost_table(table, output)
    return table


def derive(run: str | os.PathLike, *, epoch: int | None = None, max_macs: float | None = None,
           max_params: float | None = None, max_latency: float | None = None,
           costs: str | os.PathLike | None = None, dataset: str | None = None,
           channels: int | None = None, layers: int | None = None, pareto: bool = False,
           verify: bool = True, output: str | os.PathLike | None = None):
    """The best genotype of a search run (`attdarts.networks.budget_derive`) whose cost at the
    final size is within the caps (multiply-adds and parameters as counts, latency in ms from
    the cost table `costs`); a `Derived` (genotype, score, costs, front with `pareto`). Written
    to `output` when given; `verify` compiles it and checks the table's counts."""
    from attdarts.runs.search.budget import derive_run

    return derive_run(run, epoch=epoch, max_macs=max_macs, max_params=max_params,
                      max_latency=max_latency, costs=costs, dataset=dataset, channels=channels,
                      layers=layers, pareto=pareto, verify=verify, output=output)
