"""`attdarts fmt` and `check` on unfriendly filesystems, and the CLI's clean one-line errors."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts import files
from attdarts.cli import cli
from attdarts.runs import checkpoints

ROOT = Path(__file__).resolve().parents[2]
CANONICAL = (ROOT / "genotypes" / "darts_v2.geno").read_text()
MESSY = CANONICAL.replace("    ", "  ").replace(" + ", "+")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_fmt_keeps_the_mode_of_a_rewritten_file(tmp_path, umask_022):
    shared = tmp_path / "shared.geno"
    shared.write_text(MESSY)
    os.chmod(shared, 0o664)
    private = tmp_path / "private.geno"
    private.write_text(MESSY)
    os.chmod(private, 0o600)
    result = _run("fmt", tmp_path)
    assert result.exit_code == 0, result.output
    assert shared.read_text() == CANONICAL and private.read_text() == CANONICAL
    assert (_mode(shared), _mode(private)) == (0o664, 0o600)


def test_fmt_refuses_a_read_only_file_and_formats_the_others(tmp_path):
    locked = tmp_path / "a_locked.geno"
    locked.write_text(MESSY)
    os.chmod(locked, 0o444)
    other = tmp_path / "b_other.geno"
    other.write_text(MESSY)
    result = _run("fmt", tmp_path)
    assert result.exit_code == 1
    assert f"attdarts fmt: cannot write {locked}: the file is read-only" in result.output
    assert "Traceback" not in result.output
    assert locked.read_text() == MESSY and _mode(locked) == 0o444
    assert other.read_text() == CANONICAL


def test_fmt_writes_through_a_symbolic_link(tmp_path):
    real = tmp_path / "zoo" / "cell.geno"
    real.parent.mkdir()
    real.write_text(MESSY)
    link = tmp_path / "link.geno"
    link.symlink_to(real)
    result = _run("fmt", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and real.read_text() == CANONICAL


def test_fmt_on_a_full_disk_is_one_line_and_leaves_the_file(tmp_path, monkeypatch):
    path = tmp_path / "messy.geno"
    path.write_text(MESSY)

    class Full:
        def __init__(self, handle):
            self._file = os.fdopen(handle, "wb")

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._file, name)

    monkeypatch.setattr(files, "_open_for_writing", Full)
    result = _run("fmt", path)
    assert result.exit_code == 1
    assert result.output.strip() == f"attdarts fmt: cannot write {path}: No space left on device"
    assert path.read_text() == MESSY
    assert [p.name for p in tmp_path.iterdir()] == ["messy.geno"]


def test_fmt_on_a_read_only_filesystem_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "messy.geno"
    path.write_text(MESSY)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    result = _run("fmt", path)
    assert result.exit_code == 1
    assert result.output.strip() == f"attdarts fmt: cannot write {path}: Read-only file system"
    assert path.read_text() == MESSY


def test_check_on_a_directory_without_genotype_files_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    result = _run("check", tmp_path)
    assert result.exit_code == 1
    assert f"{tmp_path}: no genotype files (*.geno) in this directory; nothing checked" in result.output
    good = tmp_path / "sub" / "g.geno"
    good.parent.mkdir()
    good.write_text(CANONICAL)
    assert _run("check", tmp_path).exit_code == 0


def test_the_group_prints_a_checkpoint_error_as_one_line(tmp_path, monkeypatch):
    """A WriteError no command catches (here: plot on a full disk) is one line, exit 1."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "weights.jsonl").write_text(
        '{"epoch": 1, "normal": {"alpha": [[0.5, 0.5]]}}\n')
    target = tmp_path / "out.png"
    target.write_bytes(b"old picture")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    result = _run("plot", run, "-o", target)
    assert result.exit_code == 1
    assert f"attdarts: cannot write {target}: No space left on device" in result.output
    assert "Traceback" not in result.output
    assert target.read_bytes() == b"old picture"


def test_train_on_a_full_disk_is_one_line_and_keeps_earlier_files(tmp_path, monkeypatch, one_thread):
    """The first epoch is written; the disk fills during the second: one line naming the file,
    exit 1, and the first epoch's checkpoint is intact."""
    run = tmp_path / "run"
    args = ["train", ROOT / "genotypes" / "darts_v2.geno", "--dataset", "synthetic",
            "--channels", "4", "--layers", "3", "--batch-size", "2", "--epochs", "2",
            "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet", "--out", run]
    real_open = files._open_for_writing
    opened = []

    class Full:
        def __init__(self, handle):
            self._file = os.fdopen(handle, "wb")

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._file, name)

    def open_for_writing(handle):
        first_epoch_done = (run / "last.pt").exists() and (run / "metrics.jsonl").exists()
        opened.append(first_epoch_done)
        return Full(handle) if first_epoch_done else real_open(handle)

    monkeypatch.setattr(files, "_open_for_writing", open_for_writing)
    result = _run(*args)
    assert result.exit_code == 1, result.output
    assert "cannot write" in result.output and "No space left on device" in result.output
    assert str(run) in result.output and "Traceback" not in result.output
    assert "unexpected pos" not in result.output
    assert checkpoints.load(run / "last.pt")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_an_output_error_outside_any_command_is_one_line(monkeypatch, capsys):
    """`attdarts plot RUN -o p.png > listing.txt` on a full disk: click.echo raises OSError from
    inside the command; the console script prints one line and exits 1, no traceback."""
    import attdarts.cli as shell

    def full_disk(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(shell, "cli", full_disk)
    with pytest.raises(SystemExit) as done:
        shell.main()
    assert done.value.code == 1
    error = capsys.readouterr().err
    assert error == "attdarts: cannot write the output: File too large\n"


def test_fmt_refuses_an_empty_file_and_an_empty_directory_as_check_does(tmp_path):
    empty_file = tmp_path / "empty.geno"
    empty_file.write_text("")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    for command in ("fmt", "check"):
        result = CliRunner().invoke(cli, [command, str(empty_file)])
        assert result.exit_code == 1 and "defines no genotype or space" in result.output
        result = CliRunner().invoke(cli, [command, str(empty_dir)])
        assert result.exit_code == 1 and "no genotype files (*.geno)" in result.output
    assert empty_file.read_text() == ""
