"""torchrun with two nodes on one machine (`--nnodes 2`, c10d rendezvous on localhost, gloo, CPU).

Two launchers, one process each, stand for two machines. Their run must be the run that one
machine with two processes makes (`--standalone --nproc-per-node 2`), bit for bit: the same ranks
do the same work, only the rendezvous differs. (A data-parallel run is not the run of one process
with the same global batch: each rank normalises its batches with its own batch-norm statistics
and draws its own augmentation and drop path; README, "Clusters".)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attdarts.runs import checkpoints
from helpers import TINY_SPACE, metrics_without_timings as metrics

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "attdarts.cli"]


def two_nodes_and_one(arguments: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """The same command under two single-process launchers (`--nnodes 2`) and under one launcher
    with two processes; returns their run directories."""
    port = free_port()
    nodes = [subprocess.Popen(
        torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "attdarts-test")
        + arguments + ["--out", str(tmp_path / "two-nodes")],
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)]
    one = subprocess.run(torchrun("--standalone", "--nproc-per-node", "2") + arguments
                         + ["--out", str(tmp_path / "one-node")], env=environment(),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    for node in nodes:
        output, _ = node.communicate(timeout=TIMEOUT)
        assert node.returncode == 0, output[-3000:]
    return tmp_path / "two-nodes", tmp_path / "one-node"


# three launchers and four workers that import torch, at once: 90 s measured on two cores that
# other jobs kept busy (load average 7)
@pytest.mark.slow
def test_training_on_two_nodes_is_the_two_process_run(tmp_path):
    two_nodes, one_node = two_nodes_and_one(
        ["train", str(DARTS_V2), "--dataset", "synthetic", "--channels", "8", "--layers", "5",
         "--epochs", "2", "--batch-size", "8", "--max-steps-per-epoch", "2", "--deterministic",
         "--device", "cpu", "--quiet"], tmp_path)
    assert json.loads((two_nodes / "config.json").read_text())["world_size"] == 2
    assert metrics(two_nodes) == metrics(one_node) and len(metrics(two_nodes)) == 2
    a, b = (checkpoints.load(run / "last.pt")["model"] for run in (two_nodes, one_node))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# as above: 63 s measured at load average 7
@pytest.mark.slow
def test_first_order_search_on_two_nodes_is_the_two_process_run(tmp_path):
    space = tmp_path / "tiny.geno"
    space.write_text(TINY_SPACE)
    two_nodes, one_node = two_nodes_and_one(
        ["search", str(space), "--dataset", "synthetic", "--channels", "4", "--layers", "5",
         "--epochs", "2", "--batch-size", "8", "--max-steps-per-epoch", "2", "--deterministic",
         "--device", "cpu", "--quiet"], tmp_path)
    for name in ("genotype-epoch001.geno", "genotype-epoch002.geno", "genotype.geno",
                 "weights.jsonl"):
        assert (two_nodes / name).read_bytes() == (one_node / name).read_bytes(), name
    assert metrics(two_nodes) == metrics(one_node) and len(metrics(two_nodes)) == 2


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(word) for word in text.split()]


# three launchers with two workers each: 100 s measured at load average 10
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    arguments = ["train", str(DARTS_V2), "--dataset", "synthetic", "--channels", "8", "--layers",
                 "5", "--epochs", "3", "--batch-size", "8", "--max-steps-per-epoch", "10",
                 "--deterministic", "--device", "cpu", "--quiet"]
    launcher = torchrun("--standalone", "--nproc-per-node", "2")
    whole = subprocess.Popen(launcher + arguments + ["--out", str(tmp_path / "whole")],
                             env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    stopped = subprocess.Popen(launcher + arguments + ["--out", str(tmp_path / "stopped")],
                               env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    metrics_file, deadline = tmp_path / "stopped" / "metrics.jsonl", time.monotonic() + TIMEOUT
    while not (metrics_file.exists() and metrics_file.read_text().strip()):  # epoch 1 is done
        assert stopped.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = children(stopped.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGUSR1)  # one rank only
    output, _ = stopped.communicate(timeout=TIMEOUT)
    # both ranks stopped at the same step (else the other would wait in the next all-reduce);
    # torchrun may end the second with SIGTERM after the first exits, so count one 75 at least
    assert "exitcode  : 75" in output, output[-3000:]
    assert "continue with: attdarts train --resume" in output
    # last.pt holds where the line says the run stopped (before epoch 2's first step when the
    # signal came before it: the epoch's own last.pt, without a partial epoch)
    epoch, step = map(int, re.search(r"in epoch (\d+) after step (\d+)", output).groups())
    state = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert epoch in (2, 3) and state["epoch"] == epoch - 1
    assert state.get("partial", {"step": 0})["step"] == step
    resumed = subprocess.run(launcher + ["train", "--resume",
                                         str(tmp_path / "stopped"), "--device", "cpu", "--quiet"],
                             env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=TIMEOUT) == 0, whole.stderr.read()[-3000:]
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "whole")
