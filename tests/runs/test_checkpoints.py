"""The atomic writer: a full disk or a read-only filesystem gives one clean `WriteError` and
leaves the old file; modes and symbolic links survive a rewrite."""

from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from pathlib import Path

import pytest

from attdarts import files
from attdarts.files import FileError, WriteError, atomic_write_text
from attdarts.runs import checkpoints


class FullDisk(io.RawIOBase):
    """The temporary file on a disk with `room` bytes left: the next write past it fails with
    ENOSPC, as a real full disk does."""

    def __init__(self, handle: int, room: int) -> None:
        self._file = os.fdopen(handle, "wb")
        self._room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = len(memoryview(data))
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._file.write(data)

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def fill_disk(monkeypatch, room: int = 100) -> None:
    monkeypatch.setattr(files, "_open_for_writing", lambda handle: FullDisk(handle, room))


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_torch_save_on_a_full_disk_is_a_clean_write_error(tmp_path, monkeypatch, one_thread):
    import torch

    target = tmp_path / "last.pt"
    checkpoints.save(target, {"epoch": 1})
    before = target.read_bytes()
    fill_disk(monkeypatch, room=300)
    with pytest.raises(WriteError) as caught:
        checkpoints.save(target, {"epoch": 2, "weights": torch.zeros(10_000)})
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert isinstance(caught.value, FileError)
    assert target.read_bytes() == before  # the earlier checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_text_on_a_full_disk_is_a_clean_write_error(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    fill_disk(monkeypatch, room=10)
    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write_text(target, "x" * 10_000)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_read_only_filesystem_is_a_clean_write_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError) as caught:
        atomic_write_text(tmp_path / "a.txt", "text")
    assert str(caught.value) == f"cannot write {tmp_path / 'a.txt'}: Read-only file system"
    assert isinstance(caught.value, OSError)  # callers that skip an optional write still catch it


def test_other_errors_of_the_writer_pass_through(tmp_path):
    def broken(file):
        raise KeyError("not a write failure")

    with pytest.raises(KeyError):
        files.atomic_write(tmp_path / "a.bin", broken)
    assert list(tmp_path.iterdir()) == []


def test_new_files_respect_the_umask(tmp_path, umask_027):
    atomic_write_text(tmp_path / "config.json", "{}")
    assert stat.S_IMODE(os.stat(tmp_path / "config.json").st_mode) == 0o640  # 0666 & ~027


def test_rewritten_files_keep_their_mode(tmp_path, umask_027):
    target = tmp_path / "genotype.geno"
    target.write_text("old")
    os.chmod(target, 0o604)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o604


def test_symbolic_links_are_written_through(tmp_path):
    real = tmp_path / "real" / "cell.geno"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.geno"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["cell.geno"]


def test_load_still_reads_what_save_wrote(tmp_path, one_thread):
    checkpoints.save(tmp_path / "a.pt", {"epoch": 3})
    assert checkpoints.load(tmp_path / "a.pt") == {"epoch": 3}
    assert Path(tmp_path / "a.pt").stat().st_size > 0


def test_load_run_state_refuses_another_kind(tmp_path, one_thread):
    checkpoints.save(tmp_path / "last.pt", {"kind": "attdarts-search", "epoch": 1})
    assert checkpoints.load_run_state(tmp_path / "last.pt", "attdarts-search")["epoch"] == 1
    assert checkpoints.load_run_state(tmp_path / "last.pt", None)["epoch"] == 1
    with pytest.raises(checkpoints.CheckpointError, match="not a training checkpoint"):
        checkpoints.load_run_state(tmp_path / "last.pt", "attdarts-train")


def test_a_foreign_file_is_named_as_such_without_torchs_advice(tmp_path, one_thread):
    """A text file given as a checkpoint, or a whole model that other code pickled, is refused in
    words for a user; torch's own message (which advises weights_only=False, i.e. running the
    file's code) never reaches them."""
    import torch

    (tmp_path / "cell.geno").write_text("# a genotype, not a checkpoint\ngenotype x {\n")
    with pytest.raises(checkpoints.CheckpointError) as refused:
        checkpoints.load(tmp_path / "cell.geno")
    assert "not a file written by torch.save" in str(refused.value)
    assert "weights_only" not in str(refused.value)

    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(checkpoints.CheckpointError) as refused:
        checkpoints.load(tmp_path / "model.pt")
    assert str(refused.value) == (f"{tmp_path / 'model.pt'}: not an attdarts checkpoint (it holds "
                                  "Python objects, such as a whole model, that attdarts does not "
                                  "load)")
