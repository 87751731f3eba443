"""A run directory: which kind of run it holds, and the lock that keeps a second process out.

Two processes writing one run directory would mix their files (two `train --out X` at once, two
`search --resume X`, a `--resume` of a seed that a multi-seed search is running). Every run
therefore holds an exclusive lock on `RUN_DIR/.lock` while it runs (`claim`; the file is removed
when the run ends), and a second run of that directory is refused in one line naming the
holder's process id. The lock is `fcntl.flock`, which the kernel releases when its holder exits
in any way, SIGKILL included: a killed run leaves its `.lock` file but no lock, and the next run
takes it. Under torchrun only rank 0, the process that writes, takes it. On NFS, Linux maps
`flock` to a lock the server sees, so runs on different machines exclude each other too.

`claim` also creates the directory; if the run is refused before it writes anything (a bad
setting, too little data, an unknown device), the directory it created is removed again, so the
corrected command works on the same `--out`.

`kind` tells a search run directory from a training one, so that neither command writes over the
other's files.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attdarts.files import WriteError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"

_held: dict[str, int] = {}  # run directories this process holds (real path -> depth of claims)


class RunDirInUse(Exception):
    """The run directory is held by another running process; the message names it."""


def kind(run_dir: str | os.PathLike) -> str | None:
    """"search" (one seed's search), "seeds" (a multi-seed search: seeds.json), "train" (a
    training run) or None (no run of ours, or nothing written yet)."""
    run_dir = Path(run_dir)
    if (run_dir / "seeds.json").is_file():
        return "seeds"
    if (run_dir / "space.geno").is_file() or (run_dir / "checkpoint.pt").is_file():
        return "search"
    if (run_dir / "last.pt").is_file() or (run_dir / "best.pt").is_file():
        return "train"
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and "space_file" in config:
        return "search"
    if isinstance(config, dict) and "genotype" in config:
        return "train"
    return None


KIND_NAMES = {"search": "a search", "seeds": "a multi-seed search", "train": "a training run"}


def main_process() -> bool:
    """Whether this process writes the run's files (rank 0 under torchrun, or no torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def claim(run_dir: str | os.PathLike, *, main: bool | None = None) -> Iterator[Path]:
    """Hold `run_dir`'s lock while the block runs; `RunDirInUse` if another process holds it.

    Creates `run_dir` when missing. The lock file is removed when the block ends (a SIGKILLed
    run leaves it, held by no one, and the next run takes it). When the block raises and this
    call created the directory, it is removed again if nothing was written into it, so a
    refused run leaves no trace. Claims nest within one process (a multi-seed search holds its
    folder and each seed's). `main=False` (a torchrun rank other than 0) takes no lock; the
    default asks `main_process()`.
    """
    run_dir = Path(run_dir)
    if not (main_process() if main is None else main) or fcntl is None:
        yield run_dir
        return
    key = os.path.realpath(run_dir)
    if key in _held:  # this process holds it already (an outer claim)
        _held[key] += 1
        try:
            yield run_dir
        finally:
            _held[key] -= 1
        return
    existed = run_dir.is_dir()
    lock_path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _lock(run_dir, lock_path)
    except OSError as error:  # a read-only filesystem, a full disk: nothing of ours is left
        if not existed:
            _remove_empty(run_dir)
        raise WriteError(f"cannot write {error.filename or lock_path}: "
                         f"{error.strerror or error}") from None
    _held[key] = 1
    failed = False
    try:
        yield run_dir
    except BaseException:
        failed = True
        raise
    finally:
        del _held[key]
        try:
            lock_path.unlink()  # while still held: the next run creates a fresh one
        except OSError:
            pass
        os.close(handle)  # releases the lock
        if failed and not existed:
            _remove_empty(run_dir)


def _remove_empty(run_dir: Path) -> None:
    try:
        run_dir.rmdir()  # only if empty: nothing was written
    except OSError:
        pass


def _lock(run_dir: Path, lock_path: Path) -> int:
    """Open and lock `lock_path`; the descriptor holding the lock. Retried when the file was
    replaced meanwhile (its holder removed it on release while this process was opening it)."""
    while True:
        handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(handle)
            os.close(handle)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirInUse(
                f"'{run_dir}' is in use by another attdarts run ({holder}); wait for it to end "
                "or stop it, or choose another --out") from None
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle).st_ino:
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
    except OSError:  # a full disk: the lock file goes, as when the run ends
        lock_path.unlink(missing_ok=True)
        os.close(handle)
        raise
    return handle


def _holder(handle: int) -> str:
    try:
        pid = os.pread(handle, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"
