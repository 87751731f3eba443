"""One run per run directory (attdarts.runs.rundir): the lock a run holds while it runs, which the
kernel releases when its holder dies (SIGKILL included), and the kinds of run directory that
`train` and `search` refuse to write into (issue 19, section 5, cases 1-3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.runs import rundir
from helpers import TINY_SPACE

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
TINY = ["--dataset", "synthetic", "--channels", "4", "--layers", "3", "--batch-size", "4",
        "--epochs", "1", "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet"]
# a process that holds a run directory as a run does, until it is killed
HOLDER = ("import sys, time\nfrom attdarts.runs import rundir\n"
          "with rundir.claim(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def holder():
    """Start a process holding a directory's lock; it is killed at the end of the test."""
    started = []

    def start(path: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def invoke(*arguments) -> object:
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


def files(folder: Path) -> dict[str, bytes]:
    """What a run directory holds, but a lock file (left by a SIGKILLed holder)."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != rundir.LOCK}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished one-step search run directory."""
    folder = tmp_path_factory.mktemp("searched")
    (folder / "tiny.geno").write_text(TINY_SPACE)
    result = invoke("search", folder / "tiny.geno", *TINY, "--threads", "1", "--out", folder / "run")
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-step training run directory."""
    folder = tmp_path_factory.mktemp("trained")
    result = invoke("train", DARTS_V2, *TINY, "--threads", "1", "--out", folder / "run")
    assert result.exit_code == 0, result.output
    return folder / "run"


# --- the lock --------------------------------------------------------------------------------


def test_a_held_directory_is_refused_naming_the_holder(tmp_path, holder):
    process = holder(tmp_path / "run")
    with pytest.raises(rundir.RunDirInUse, match=f"in use by another attdarts run "
                                                 rf"\(process {process.pid}\)"):
        with rundir.claim(tmp_path / "run"):
            pass


def test_a_sigkilled_holder_releases_the_lock(tmp_path, holder):
    process = holder(tmp_path / "run")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (tmp_path / "run" / rundir.LOCK).is_file()  # left behind, but held by no one
    with rundir.claim(tmp_path / "run"):
        assert (tmp_path / "run" / rundir.LOCK).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run" / rundir.LOCK).exists()


def test_claims_nest_in_one_process_and_leave_no_lock_file(tmp_path):
    with rundir.claim(tmp_path / "run"):
        with rundir.claim(tmp_path / "run"):  # a multi-seed search holds its folder twice
            (tmp_path / "run" / "config.json").write_text("{}")
        assert (tmp_path / "run" / rundir.LOCK).is_file()
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json"]


def test_a_refused_run_removes_the_directory_it_created(tmp_path):
    with pytest.raises(ValueError):
        with rundir.claim(tmp_path / "new" / "run"):
            raise ValueError("refused before writing")
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with rundir.claim(tmp_path / "kept"):
            raise ValueError("refused before writing")
    assert (tmp_path / "kept").is_dir() and not os.listdir(tmp_path / "kept")
    with pytest.raises(ValueError):  # a run that wrote something keeps it
        with rundir.claim(tmp_path / "wrote"):
            (tmp_path / "wrote" / "metrics.jsonl").write_text("")
            raise ValueError("diverged")
    assert os.listdir(tmp_path / "wrote") == ["metrics.jsonl"]


def test_a_full_disk_or_read_only_out_is_one_line_naming_it_and_leaves_nothing(tmp_path,
                                                                              monkeypatch):
    """`search --out` or `train --out` on a full disk or a read-only filesystem: a WriteError
    naming the file (the commands print it as one line), no .lock and no directory left."""
    import errno

    from attdarts.files import WriteError

    def full(handle, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(rundir.os, "write", full)
        with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'run' / rundir.LOCK}: "
                                             "No space left on device"):
            with rundir.claim(tmp_path / "run"):
                pass
    assert not (tmp_path / "run").exists()

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(WriteError, match="cannot write .*ro: Read-only file system"):
        with rundir.claim(tmp_path / "ro"):
            pass
    result = invoke("search", ROOT / "genotypes" / "spaces" / "darts.geno", *TINY, "--out",
                    tmp_path / "ro")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: cannot write {tmp_path / 'ro'}: Read-only file system")


def test_only_the_writing_process_of_torchrun_takes_the_lock(tmp_path, holder, monkeypatch):
    holder(tmp_path / "run")
    monkeypatch.setenv("RANK", "1")  # rank 1 writes nothing: it takes no lock
    with rundir.claim(tmp_path / "run"):
        pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(rundir.RunDirInUse):
        with rundir.claim(tmp_path / "run"):
            pass


# --- the commands refuse a directory in use (section 5, cases 1 and 2) ------------------------


def test_train_and_search_refuse_an_out_in_use(tmp_path, holder):
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    process = holder(tmp_path / "run")
    for command in (["train", DARTS_V2], ["search", tmp_path / "tiny.geno"]):
        result = invoke(*command, *TINY, "--out", tmp_path / "run")
        assert result.exit_code == 1, result.output
        assert result.output.strip() == (
            f"Error: '{tmp_path / 'run'}' is in use by another attdarts run (process "
            f"{process.pid}); wait for it to end or stop it, or choose another --out")
        assert os.listdir(tmp_path / "run") == [rundir.LOCK]  # nothing written


def test_resuming_a_run_in_use_is_refused(tmp_path, searched, trained, holder):
    for command, run in (("search", searched), ("train", trained)):
        before = files(run)
        holder(run)
        result = invoke(command, "--resume", run, "--device", "cpu", "--quiet")
        assert result.exit_code == 1 and "is in use by another attdarts run" in result.output
        assert files(run) == before


@pytest.mark.parametrize("together", [[], ["--together"]])
def test_a_seed_of_a_multi_seed_search_in_use_is_refused(together, tmp_path, holder):
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    holder(tmp_path / "seeds" / "seed-2")  # e.g. `search --resume seeds/seed-2` runs
    result = invoke("search", tmp_path / "tiny.geno", *TINY, "--seeds", "1,2", *together,
                    "--out", tmp_path / "seeds")
    assert result.exit_code == 1 and f"'{tmp_path / 'seeds' / 'seed-2'}' is in use" in result.output
    assert os.listdir(tmp_path / "seeds") == ["seed-2"]  # the holder's; nothing written


@pytest.mark.slow
def test_two_real_trainings_on_one_out(tmp_path):
    """The second `train --out X` is refused while the first runs; after the first is SIGKILLed
    the same command runs (the kernel released the lock)."""
    start = [sys.executable, "-m", "attdarts.cli", "train", str(DARTS_V2), "--dataset",
             "synthetic", "--channels", "4", "--layers", "3", "--batch-size", "4", "--device",
             "cpu", "--quiet", "--threads", "1", "--out", str(tmp_path / "run")]
    command = [*start, "--epochs", "50"]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "config.json").is_file():  # it is running
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.2)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"Error: '{tmp_path / 'run'}' is in use by another attdarts run (process "
            f"{first.pid}); wait for it to end or stop it, or choose another --out")
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = subprocess.run([*start, "--epochs", "1", "--max-steps-per-epoch", "1"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "run" / rundir.LOCK).exists()


# --- a search and a training do not write into each other's directory (case 3) ----------------


def test_kinds_of_run_directory(searched, trained, tmp_path):
    assert rundir.kind(searched) == "search" and rundir.kind(trained) == "train"
    assert rundir.kind(tmp_path) is None
    (tmp_path / "seeds.json").write_text("{}")
    assert rundir.kind(tmp_path) == "seeds"


def test_train_refuses_a_search_directory_and_search_a_training_one(searched, trained, tmp_path):
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    for command, run, words in (
            (["train", DARTS_V2], searched, "holds a search, not a training run"),
            (["search", tmp_path / "tiny.geno"], trained, "holds a training run, not a search")):
        before = files(run)
        result = invoke(*command, *TINY, "--out", run)
        assert result.exit_code != 0 and words in result.output, result.output
        assert files(run) == before  # nothing overwritten


def test_a_single_search_refuses_a_multi_seed_folder(tmp_path):
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    (tmp_path / "seeds").mkdir()
    record = {"seeds": [1, 2], "config": {}}
    (tmp_path / "seeds" / "seeds.json").write_text(json.dumps(record))
    result = invoke("search", tmp_path / "tiny.geno", *TINY, "--out", tmp_path / "seeds")
    assert result.exit_code == 1 and "already holds a multi-seed search" in result.output
    assert os.listdir(tmp_path / "seeds") == ["seeds.json"]
