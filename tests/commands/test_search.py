"""`attdarts search` as a command: what its output looks like where it goes."""

from __future__ import annotations

from click.testing import CliRunner

from attdarts.cli import cli

TINY_SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect]
    attentions = [identity, se]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, one_thread):
    """A log redirected to a file (a batch job's) holds the epoch lines, not a bar's carriage
    returns: the bar is for a terminal, as in `attdarts train`."""
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    result = CliRunner().invoke(cli, [
        "search", str(tmp_path / "tiny.geno"), "--dataset", "synthetic", "--channels", "4",
        "--layers", "3", "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "1",
        "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: train loss" in result.stderr
    assert "step/s" not in result.stderr and "\r" not in result.stderr
