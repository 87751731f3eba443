"""Source locations and user-facing errors for the DSL.

Every problem the front end finds becomes a `Problem` with a `Span`; a `DslError` carries one or
more of them and renders each as ``file:line:col: message`` followed by the source line, a caret
and a hint. `DslError` deliberately does not subclass `ValueError`: pydantic would wrap it.
`suggest` is the one 'did you mean' of the package.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_MAX_SHOWN = 160  # characters of a source line shown around the caret


@dataclass(frozen=True)
class Span:
    """1-based line and column of the first character, and of the character after the last."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


@dataclass(frozen=True)
class Problem:
    message: str
    span: Span | None = None
    hint: str | None = None


def by_position(problem: Problem) -> tuple[int, int]:
    """Sort key: problems in text order, those without a location first."""
    span = problem.span
    return (span.line, span.column) if span else (0, 0)


@dataclass
class DslError(Exception):
    """One or more problems found in a DSL text (or in IR built from one)."""

    problems: list[Problem] = field(default_factory=list)
    path: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.problems[0].message if self.problems else "invalid input")

    @classmethod
    def single(cls, message: str, span: Span | None = None, hint: str | None = None) -> "DslError":
        return cls([Problem(message, span, hint)])

    def located(self, path: str | None, source: str | None) -> "DslError":
        """The same problems, attached to a file name and its text for rendering."""
        return DslError(list(self.problems), path if path is not None else self.path,
                        source if source is not None else self.source)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        return "\n".join(render_problem(p, self.path, self.source) for p in self.problems)


def printable(text: str) -> str:
    """Text safe to show on a terminal: control characters and odd bytes escaped."""
    out = []
    for char in text:
        if char == "\t" or (char.isprintable() and char not in "\x0b\x0c"):
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def render_problem(problem: Problem, path: str | None, source: str | None) -> str:
    name = path or "<input>"
    span = problem.span
    if span is None:
        lines = [f"{name}: {problem.message}"]
    else:
        lines = [f"{name}:{span.line}:{span.column}: {problem.message}"]
        if source is not None:
            lines.extend(_excerpt(source, span))
    if problem.hint:
        lines.append(f"  hint: {problem.hint}")
    return "\n".join(lines)


def _excerpt(source: str, span: Span) -> list[str]:
    text_lines = source.split("\n")
    if not 1 <= span.line <= len(text_lines):
        return []
    raw = text_lines[span.line - 1].rstrip("\r")
    start = span.column - 1
    if span.end_line == span.line and span.end_column and span.end_column > span.column:
        width = span.end_column - span.column
    else:
        width = 1
    # Keep a window around the caret so a 10 MB line does not flood the terminal.
    offset = max(0, start - _MAX_SHOWN // 2)
    shown = raw[offset : offset + _MAX_SHOWN]
    prefix = "..." if offset else ""
    suffix = "..." if offset + _MAX_SHOWN < len(raw) else ""
    before = printable(shown[: start - offset])
    marked = printable(shown[start - offset : start - offset + width]) or " "
    gutter = str(span.line)
    pad = " " * len(gutter)
    return [
        f"  {gutter} | {prefix}{printable(shown)}{suffix}",
        f"  {pad} | {' ' * (len(prefix) + len(before))}{'^' * max(1, len(marked))}",
    ]


def close_names(word: str, names: Iterable[str]) -> list[str]:
    """Up to three of `names` that look like `word`, closest first (difflib's ratio >= 0.6)."""
    return difflib.get_close_matches(word, list(names), n=3, cutoff=0.6)


def suggest(word: str, names: Iterable[str], *, aliases: Mapping[str, str] | None = None,
            ignore_case: bool = False) -> str | None:
    """The one 'did you mean' hint for a misspelt name, or None.

    With `ignore_case`, case does not count and a word equal to a name but for case suggests
    that name alone; `aliases` maps other spellings (an import format's names) to a name.
    """
    if aliases is None and not ignore_case:
        close = close_names(word, names)
    else:
        fold = str.lower if ignore_case else str
        table = {fold(name): name for name in names}
        table.update({fold(alias): name for alias, name in (aliases or {}).items()})
        folded = fold(word)
        matches = [folded] if folded in table else close_names(folded, table)
        close = list(dict.fromkeys(table[match] for match in matches))
    if not close:
        return None
    quoted = ", ".join(f"'{name}'" for name in close)
    return f"did you mean {quoted}?" if len(close) == 1 else f"did you mean one of {quoted}?"
