"""The project stands alone (issue 19, item 6): no tracked file points at notes or data that
live outside the repository. Sources are cited as papers and the project's own documents
(README, the dataset's README); optional outside data is named by an environment variable."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# spelled in pieces, so that this file does not name them itself
OUTSIDE = ("REFERENCE" + ".md", "STYLE" + ".md", "shared" + "/")


def _project_files() -> list[Path]:
    """The tracked files of a checkout; every file of an unpacked sdist (no git there)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    skipped = {".git", "__pycache__", ".pytest_cache", ".hypothesis", "runs"}
    return [path for path in ROOT.rglob("*")
            if path.is_file() and not skipped & set(path.relative_to(ROOT).parts)]


def test_no_file_cites_documents_or_folders_outside_the_repository():
    found = []
    for path in _project_files():
        if path.suffix in (".jpg", ".png", ".pt") or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {word}" for word in OUTSIDE if word in line]
    assert not found, "\n".join(found)
