"""The grammar module: comments reach the `parse_tree` call that parsed them, and nothing else."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from attdarts.language import grammar

GENOTYPES = Path(__file__).resolve().parents[2] / "genotypes"


def test_comments_go_to_their_own_parse_even_across_threads():
    texts = [path.read_text(encoding="utf-8") for path in sorted(GENOTYPES.glob("*.geno"))]
    alone = [[str(c) for c in grammar.parse_tree(text)[1]] for text in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t: [str(c) for c in grammar.parse_tree(t)[1]], texts * 3))
    assert together == alone * 3
    assert any(alone)  # the goldens carry comments, so the check means something
    assert grammar._comments.get() is None
