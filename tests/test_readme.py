"""Every command README.md shows runs as written, from the repository root (issue 11, item 17).

The README is parsed, not pinned: the commands are the lines of its ```bash (sh, shell, console)
blocks, and the `$ `-prompted lines of any block, whose following lines are the output they
document. Each `attdarts` command is either run, in README order, in a temporary copy of the
repository (so `fmt` and `-o` never touch the real files), or skipped for a reason listed in
SKIPPED below. A subcommand in neither list fails the test, so a new README command cannot go
untested silently.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts import plugins
from attdarts.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Cheap front-end commands: run. `compile` builds a full-size network (seconds each) and `cost`
# measures one, so their lines run in a test marked slow.
FRONT_END = frozenset({"check", "fmt", "import", "export", "render", "diff", "plot"})
SLOW = frozenset({"compile", "cost"})

# Why the other commands are not run here. Other tests cover them on tiny inputs.
SKIPPED = {
    "search": "needs a downloaded dataset or a GPU, or runs for minutes (even the synthetic smoke "
              "search takes minutes on a loaded 2-core machine); tests/runs/search/test_loop.py covers it",
    "train": "needs a downloaded dataset (CIFAR-10/100, ImageNet) or a GPU, and hours; "
             "tests/runs/train/test_loop.py covers it",
    "test": "needs a checkpoint from a training run; tests/runs/train/test_loop.py covers it",
    "torchrun": "needs several GPUs (torchrun)",
    "export-model": "needs a training run or builds paper-sized networks (tens of seconds), and "
                    "the export extra; tests/commands/test_export_model.py covers it",
    "report": "needs run directories of train or search; tests/commands/test_report.py covers it",
    "predict": "needs a training run or an exported model and images; "
               "tests/commands/test_predict.py covers it",
    "consensus": "needs the run directories of several search seeds; tests/tools/test_consensus.py "
                 "covers it",
    "derive": "needs a search run directory (made by `search`, skipped above); "
              "tests/runs/search/test_budget.py covers it on a tiny run",
}
# Lines that run other programs (the setup scripts, benchmarks on a GPU, `git config`) are not
# attdarts commands and are not run here.
# `plot` draws a search run: run only when the README's run directory exists (made by `search`).
# `render --weights` and `diff` of a run's genotypes likewise.
NEEDS_INPUT = frozenset({"plot", "render", "diff"})

_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
_SHELL_BLOCKS = frozenset({"bash", "sh", "shell", "console", "zsh"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line of README.md where the command starts
    text: str
    words: tuple[str, ...]  # program and arguments, environment assignments removed
    output: str | None  # the output printed under a `$ ` prompt, if the README shows one

    @property
    def program(self) -> str:
        return self.words[0]

    @property
    def subcommand(self) -> str:
        """The command after `attdarts` and its group options (`--plugin MODULE`)."""
        words = list(self.words[1:]) if self.program == "attdarts" else []
        while words[:1] == ["--plugin"]:
            words = words[2:]
        return words[0] if words else ""

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def readme_commands(text: str) -> list[Command]:
    """The shell commands of a Markdown text, in order."""
    commands: list[Command] = []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        marker, language = fence.group(1), fence.group(2).lower()
        end = index + 1
        while end < len(lines) and not lines[end].startswith(marker):
            end += 1
        commands += _block_commands(lines[index + 1:end], index + 2, language in _SHELL_BLOCKS)
        index = end + 1
    return commands


def _block_commands(block: list[str], first_line: int, shell: bool) -> list[Command]:
    commands = []
    position = 0
    while position < len(block):
        raw = block[position]
        start = position
        prompted = raw.startswith("$ ")
        if not (shell or prompted) or not raw.strip() or raw.lstrip().startswith("#"):
            position += 1
            continue
        text = raw[2:] if prompted else raw
        while text.endswith("\\") and position + 1 < len(block):  # continuation lines
            position += 1
            text = text[:-1] + " " + block[position].strip()
        position += 1
        output = None
        if prompted:
            shown = []
            while position < len(block) and not block[position].startswith("$ "):
                shown.append(block[position])
                position += 1
            output = "\n".join(shown).strip("\n")
        words = shlex.split(text, comments=True)
        while words and _ASSIGNMENT.match(words[0]):  # OMP_NUM_THREADS=1 attdarts ...
            words.pop(0)
        if words:
            commands.append(Command(first_line + start, text.strip(), tuple(words), output))
    return commands


def _commands() -> list[Command]:
    return readme_commands(README.read_text(encoding="utf-8"))


def _copy_of_the_repository(destination: Path) -> Path:
    """The files a fresh clone has, without outputs (runs/, data/, caches, .git)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = {name for name in names if name in {".git", "__pycache__", ".pytest_cache"}
                   or name.endswith((".pt", ".pyc"))}
        if Path(directory) == ROOT:
            ignored |= {"runs", "data"} & set(names)
        return ignored

    copy = destination / "repository"
    shutil.copytree(ROOT, copy, ignore=ignore)
    return copy


def _expected_status(command: Command, stdout: str) -> set[int]:
    """The exit status README documents for a successful run of the command."""
    if command.subcommand == "diff":  # as diff(1): 0 same, 1 different
        return {1} if stdout.strip() else {0}
    if command.subcommand == "fmt" and "--check" in command.words:  # 1 if files would change
        return {1} if stdout.strip() else {0}
    return {0}


def _run_in(copy: Path, commands: list[Command], monkeypatch) -> list[str]:
    """Run the commands in `copy`, in order; return what was run (for the failure messages).
    What a README `--plugin` loads (catalog entries, sys.path, modules) is undone afterwards."""
    monkeypatch.chdir(copy)
    monkeypatch.setattr(sys, "path", list(sys.path))
    tables = [dict(table) for table in plugins.tables()]
    loaded = dict(plugins._LOADED)
    try:
        return _run_commands(commands)
    finally:
        for table, saved in zip(plugins.tables(), tables):
            table.clear()
            table.update(saved)
        plugins._LOADED.clear()
        plugins._LOADED.update(loaded)
        for name, module in list(sys.modules.items()):
            if str(copy) in str(getattr(module, "__file__", "") or ""):
                del sys.modules[name]


def _run_commands(commands: list[Command]) -> list[str]:
    ran = []
    for command in commands:
        result = CliRunner().invoke(cli, list(command.words[1:]), prog_name="attdarts")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{command} raised {result.exception!r}") from result.exception
        assert "Traceback" not in result.output, f"{command}\n{result.output}"
        expected = _expected_status(command, result.stdout)
        assert result.exit_code in expected, (
            f"{command}\nexit status {result.exit_code}, expected {sorted(expected)}\n"
            f"{result.output}")
        if command.output is not None:
            assert result.stdout.strip("\n") == command.output, (
                f"{command}\nREADME shows:\n{command.output}\nthe command printed:\n{result.stdout}")
        ran.append(str(command))
    return ran


def test_readme_commands_are_all_accounted_for():
    """Each `attdarts` subcommand in README.md is either run by this file or skipped for a reason."""
    commands = _commands()
    attdarts = [c for c in commands if c.program == "attdarts"]
    assert len(attdarts) >= 10, "README.md shows fewer attdarts commands than expected: parsing broke?"
    for command in attdarts:
        known = FRONT_END | SLOW | set(SKIPPED)
        assert command.subcommand in known, (
            f"{command}\n'attdarts {command.subcommand}' is neither run nor skipped by "
            "tests/test_readme.py: add it to FRONT_END (and make it run as written) or to SKIPPED "
            "with the reason")
    # the front end is really exercised, from several sections
    run = {c.subcommand for c in attdarts if c.subcommand in FRONT_END}
    assert {"check", "fmt", "import", "export", "render", "diff"} <= run, run


def test_readme_parser_reads_blocks_prompts_and_continuations():
    text = "\n".join([
        "```bash",
        "# a comment",
        "attdarts check genotypes/   # trailing comment",
        "OMP_NUM_THREADS=1 attdarts train g.geno \\",
        "    --epochs 2",
        "```",
        "```python",
        "attdarts not shell",
        "```",
        "```",
        "$ attdarts diff a.geno b.geno",
        "normal n0 edge c_k1: a -> b",
        "```",
    ])
    commands = readme_commands(text)
    assert [c.words for c in commands] == [
        ("attdarts", "check", "genotypes/"),
        ("attdarts", "train", "g.geno", "--epochs", "2"),
        ("attdarts", "diff", "a.geno", "b.geno"),
    ]
    assert [c.line for c in commands] == [3, 4, 11]
    assert commands[2].output == "normal n0 edge c_k1: a -> b" and commands[0].output is None


def test_readme_front_end_commands_run_as_written(tmp_path, monkeypatch):
    copy = _copy_of_the_repository(tmp_path)
    commands = []
    for command in _commands():
        if command.subcommand not in FRONT_END:
            continue  # SLOW and SKIPPED: see the other tests and SKIPPED
        if command.subcommand in NEEDS_INPUT:
            target = next((word for word in command.words[2:] if not word.startswith("-")), None)
            if target is None or not (copy / target).exists():
                continue  # a search run directory: only `attdarts search` (skipped) makes one
        commands.append(command)
    ran = _run_in(copy, commands, monkeypatch)
    assert len(ran) >= 10, ran
    # the commands really wrote what README says they write
    assert (copy / "darts_v2.geno").is_file() or not any("darts_v2.geno" in c for c in ran)
    original = {p.relative_to(ROOT) for p in (ROOT / "genotypes").rglob("*.geno")}
    assert original == {p.relative_to(copy) for p in (copy / "genotypes").rglob("*.geno")}


@pytest.mark.slow
def test_readme_compile_commands_run_as_written(tmp_path, monkeypatch, one_thread):
    copy = _copy_of_the_repository(tmp_path)
    commands = [c for c in _commands() if c.subcommand in SLOW]
    assert commands, "README.md shows no attdarts compile or cost command"
    _run_in(copy, commands, monkeypatch)
