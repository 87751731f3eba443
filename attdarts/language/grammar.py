"""Text -> lark tree. The grammar is the file `grammar/attdarts.lark`; this module only finds it.

In a checkout the grammar sits beside the package (`<repo>/grammar/`); an installed wheel ships it
inside the package (`attdarts/grammar/`, see pyproject.toml). The parser is built once
(`parser()`).
"""

from __future__ import annotations

import contextvars
import functools
from pathlib import Path

import lark

from attdarts.files import shipped

GRAMMAR_FILE = "attdarts.lark"


def grammar_path() -> Path:
    path = shipped("grammar") / GRAMMAR_FILE  # attdarts/grammar/ in a wheel, <repo>/grammar/ in a checkout
    if not path.is_file():
        raise FileNotFoundError(f"cannot find the grammar file {path}")
    return path


@functools.cache
def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


def build_parser(*, strict: bool = False, lexer_callbacks: dict | None = None,
                 cache: bool = False) -> lark.Lark:
    """The LALR parser. With `cache`, lark stores the built tables in the temp directory,
    keyed by a hash of the grammar and options, so later processes start in milliseconds."""
    return lark.Lark(
        grammar_text(),
        cache=cache,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        strict=strict,
        lexer_callbacks=lexer_callbacks or {},
    )


def parse_tree(text: str) -> tuple[lark.Tree, list[lark.Token]]:
    """Parse `text`; return the tree and the comments (tokens) in text order."""
    comments: list[lark.Token] = []
    reset = _comments.set(comments)
    try:
        tree = parser().parse(text)
    finally:
        _comments.reset(reset)
    return tree, comments


@functools.cache
def parser() -> lark.Lark:
    """The shared LALR parser, which hands comments to the collector of `parse_tree`."""
    try:
        return build_parser(lexer_callbacks={"COMMENT": _collect}, cache=True)
    except OSError:  # an unwritable temp directory only costs start-up time
        return build_parser(lexer_callbacks={"COMMENT": _collect})


# where the lexer puts comments: the list of the `parse_tree` call running in this thread or
# task (lark's callbacks take the token alone, so the list cannot be passed to them)
_comments: contextvars.ContextVar[list[lark.Token] | None] = contextvars.ContextVar(
    "attdarts_grammar_comments", default=None)


def _collect(token: lark.Token) -> None:
    comments = _comments.get()
    if comments is not None:
        comments.append(token)
