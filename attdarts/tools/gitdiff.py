"""The text `attdarts git-diff-driver` prints for git's external diff interface: a semantic diff
of two versions of a genotype file, or a plain unified diff (with the reason on top) for a file
that was added, deleted or does not parse."""

from __future__ import annotations

import difflib

from attdarts.language.errors import DslError
from attdarts.language.transform import parse_text, read_source
from attdarts.tools.diff import diff_documents, format_text, is_same

DEV_NULL = "/dev/null"


def git_diff_text(path: str, new_path: str, old_file: str, new_file: str) -> str:
    """The diff of `old_file` (git's copy of `path`) and `new_file` (of `new_path`); "" when
    the two texts are identical."""
    old_label = DEV_NULL if old_file == DEV_NULL else f"a/{path}"
    new_label = DEV_NULL if new_file == DEV_NULL else f"b/{new_path}"
    header = f"diff --attdarts a/{path} b/{new_path}\n--- {old_label}\n+++ {new_label}\n"
    old_text, old_error = ("", None) if old_file == DEV_NULL else _read(old_file, old_label)
    new_text, new_error = ("", None) if new_file == DEV_NULL else _read(new_file, new_label)
    if old_file == DEV_NULL or new_file == DEV_NULL:
        return header + _unified(old_text, new_text)
    try:
        if old_error or new_error:  # not text: say why, then diff the placeholders
            raise old_error or new_error
        old = parse_text(old_text, old_label)
        new = parse_text(new_text, new_label)
    except DslError as error:
        reason = "".join(f"# {line}\n" for line in str(error).splitlines())
        return header + "# attdarts: not a valid genotype file; plain diff follows\n" + reason + \
            _unified(old_text, new_text)
    diffs = diff_documents(old, new, meta=True)
    if is_same(diffs):
        if old_text == new_text:
            return ""
        return header + "(no semantic change: layout or comments only)\n"
    return header + format_text(diffs)


def _read(file: str, label: str) -> tuple[str, DslError | None]:
    """The text of git's copy `file`, or a one-line placeholder and the reason, named by the
    file's label (git's copy is a temporary file)."""
    try:
        return read_source(file), None
    except DslError as error:
        error = error.located(label, None)
        return f"<{error.problems[0].message}>\n", error


def _unified(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 n=3, lineterm="\n")
    out = []
    for position, line in enumerate(lines):
        if position < 2:  # difflib's own ---/+++ lines: the header already has them
            continue
        out.append(line if line.endswith("\n") else line + "\n")
    return "".join(out)

