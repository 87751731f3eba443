"""Reading a search run directory for `tools`: its space, its weights per epoch, its genotype per
epoch, and the decisiveness of each epoch recomputed from them (`language.decisiveness`), so
old runs, written before the search recorded it, get it too. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from attdarts.language import ir
from attdarts.language.decisiveness import (
    DECIDED_BY, Decisiveness, DecisivenessError, decide, same_cells,
)
from attdarts.records import by_epoch, json_objects

GENOTYPE_FILE = re.compile(r"genotype-epoch(\d+)\.geno\Z")


@dataclass(frozen=True)
class EpochDecisiveness:
    epoch: int
    genotype: ir.Genotype
    decisiveness: Decisiveness
    changed_epoch: int  # the epoch at which the genotype last changed, up to this one


def read_weights(path: Path) -> dict[int, dict]:
    """epoch -> its weights.jsonl record (a repeated epoch: the last; a bad line is skipped)."""
    return by_epoch(json_objects(path))


def epoch_genotypes(run_dir: Path) -> dict[int, ir.Genotype]:
    """epoch -> the genotype of RUN_DIR/genotype-epochNNN.geno (unreadable files are left out)."""
    from attdarts.language.errors import DslError
    from attdarts.language.transform import parse_file

    found: dict[int, ir.Genotype] = {}
    for path in sorted(run_dir.glob("genotype-epoch*.geno")):
        match = GENOTYPE_FILE.match(path.name)
        if not match:
            continue
        try:
            genotypes = parse_file(path).genotypes
        except DslError:
            continue
        if genotypes:
            found[int(match.group(1))] = genotypes[0]
    return found


def read_space(run_dir: Path) -> ir.Space:
    """RUN_DIR/space.geno (a search run writes it); DslError when it is missing or bad."""
    from attdarts.language.transform import parse_file

    document = parse_file(run_dir / "space.geno")
    if not document.spaces:
        from attdarts.language.errors import DslError

        raise DslError.single("defines no search space").located(str(run_dir / "space.geno"), None)
    return document.spaces[0]


def run_decisiveness(run_dir: str | Path, *, threshold: float = DECIDED_BY
                     ) -> list[EpochDecisiveness]:
    """Every epoch of a search run directory that has both its genotype-epochNNN.geno and its
    weights.jsonl line, recomputed from those files and space.geno."""
    run_dir = Path(run_dir)
    space = read_space(run_dir)
    weights = read_weights(run_dir / "weights.jsonl")
    genotypes = epoch_genotypes(run_dir)
    result = []
    previous: ir.Genotype | None = None
    changed = 0
    for epoch in sorted(genotypes):
        genotype = genotypes[epoch]
        if previous is None or not same_cells(previous, genotype):
            changed = epoch
        previous = genotype
        if epoch not in weights:
            continue
        record = weights[epoch]
        cells = {kind: record[kind] for kind in ir.CELL_KINDS if isinstance(record.get(kind), dict)}
        result.append(EpochDecisiveness(epoch, genotype,
                                        decide(space, genotype, cells, threshold=threshold),
                                        changed))
    return result


def decide_with_run(genotype: ir.Genotype, run_dir: str | Path, epoch: int | None = None, *,
                    threshold: float = DECIDED_BY) -> tuple[Decisiveness, int]:
    """`genotype` against the weights a search run recorded at `epoch` (default: its last):
    (decisiveness, epoch). Raises DecisivenessError, in one line, for a directory without
    weights.jsonl or space.geno, a missing epoch, or a genotype that does not fit the space."""
    from attdarts.language.errors import DslError

    run_dir = Path(run_dir)
    weights = read_weights(run_dir / "weights.jsonl")
    if not weights:
        raise DecisivenessError(f"{run_dir}: no weights.jsonl with epochs (expected the run "
                                "directory of 'attdarts search')")
    if epoch is None:
        epoch = max(weights)
    if epoch not in weights:
        raise DecisivenessError(f"{run_dir}: weights.jsonl has no epoch {epoch} (it has "
                                f"{min(weights)}-{max(weights)})")
    try:
        space = read_space(run_dir)
    except DslError as error:
        raise DecisivenessError(str(error).splitlines()[0]) from None
    record = weights[epoch]
    cells = {kind: record[kind] for kind in ir.CELL_KINDS if isinstance(record.get(kind), dict)}
    return decide(space, genotype, cells, threshold=threshold), epoch


def is_search(path: Path) -> bool:
    """A search run directory: it has space.geno and genotype.geno."""
    return (path / "space.geno").is_file() and (path / "genotype.geno").is_file()


def find_searches(path: Path) -> list[Path]:
    """`path` if it is a search run directory, else the search runs under it (two levels deep,
    as `attdarts report` looks: OUT/seed-K, OUT/NAME/seed-K), seed-numbered ones in numeric
    order."""
    if is_search(path):
        return [path]
    found = []
    for child in _subdirectories(path):
        if is_search(child):
            found.append(child)
        else:
            found.extend(grandchild for grandchild in _subdirectories(child)
                         if is_search(grandchild))
    return found


_NUMBERED = re.compile(r"(\D*)(\d+)\Z")


def _subdirectories(path: Path) -> list[Path]:
    def natural(child: Path) -> tuple:
        match = _NUMBERED.match(child.name)
        return (match.group(1), int(match.group(2)), "") if match else (child.name, -1, "")

    if not path.is_dir():
        return []
    return sorted((child for child in path.iterdir() if child.is_dir()), key=natural)
