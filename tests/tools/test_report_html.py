"""`attdarts report --html`: a self-contained page, its numbers, and (slow) how it renders in
headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import HAND_CELLS, write_search_run

from attdarts.cli import cli
from attdarts.tools import report_html, report_plots

OTHER_NORMAL = HAND_CELLS.replace("max_pool_3x3(c_k2) + skip_connect(n0) >> se",
                                  "max_pool_3x3(c_k2) >> se + skip_connect(n0)", 1)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    """Two seeds of two epochs with the hand weights of tests/helpers.py; seed 1's genotype
    changes at epoch 2; seed 0 has an environment record."""
    out = tmp_path_factory.mktemp("runs") / "out"
    write_search_run(out / "seed-0", [HAND_CELLS, HAND_CELLS], seed=0)
    write_search_run(out / "seed-1", [HAND_CELLS, OTHER_NORMAL], seed=1)
    (out / "seed-0" / "environment.json").write_text(json.dumps(
        {"python": "3.11.2", "torch": {"version": "2.14.1", "cuda": None},
         "device": "cpu", "host": "test-machine"}))
    return out


@pytest.fixture(scope="module")
def page(seeds: Path, tmp_path_factory) -> Path:
    """The page of `seeds`, made once for the tests of this module."""
    target = tmp_path_factory.mktemp("page") / "page.html"
    make_page(seeds, target)
    return target


def make_page(seeds: Path, target: Path) -> str:
    result = CliRunner().invoke(cli, ["report", str(seeds), "--no-mult-adds", "--html",
                                      str(target)])
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.output
    return target.read_text(encoding="utf-8")


def test_the_page_is_self_contained_and_holds_every_part(page: Path):
    text = page.read_text(encoding="utf-8")
    # nothing to fetch: no external scripts, style sheets, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", text)
    assert "<link" not in text and not re.search(r"<script[^>]*\bsrc=", text)
    assert "@import" not in text and "url(http" not in text
    assert text.count("data:image/png;base64,") >= 2 * 3  # curves, decisiveness, weights per run
    assert text.count("<svg") >= 1 + 2 * 2  # the consensus, each run's two epochs
    # the tables `attdarts report` prints, and the consensus of the two seeds
    assert "<h3>Searches</h3>" in text and "distinct genotypes" in text
    assert "Consensus of the 2 seeds" in text and "consensus of 2 seeds: tiny" in text
    # configuration, and the environment where the run has one
    assert "configuration (config.json)" in text
    assert "environment (environment.json)" in text and "<code>torch.version</code>" in text
    assert "test-machine" in text and "no environment.json in this run directory" in text
    # an epoch slider per run, the last epoch shown, the other hidden
    assert text.count('type="range"') == 2
    assert '<div class="epoch" data-epoch="2">' in text
    assert '<div class="epoch" data-epoch="1" hidden>' in text


def test_the_numbers_on_the_page_are_the_hand_computed_ones(page: Path):
    """tests/helpers.py's weights: n0<-c_k2 keeps sep_conv_3x3 0.4 over skip_connect 0.3
    (+0.1000) and identity 0.55 over se (+0.1000); n1<-c_k2's attention tie (+0.0000); n1<-n0
    leads by 0.04 on its attention, 0.35 on its input; 4 of 8 edges decided."""
    text = page.read_text(encoding="utf-8")
    assert "epoch 2: 4 of 8 edges decided by at least 0.05 (smallest margin 0.0000: normal " \
           "n1&lt;-c_k2)" in text
    row = re.search(r"<tr><td>normal</td><td>n0&lt;-c_k2</td>(.*?)</tr>", text).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[:5] == ["<code>sep_conv_3x3</code>", "0.4000", "skip_connect", "+0.1000",
                         "<code>identity</code>"]
    assert cells[5:9] == ["0.5500", "se", "+0.1000", "–"]
    row = re.search(r"<tr><td>normal</td><td>n1&lt;-n0</td>(.*?)</tr>", text).group(1)
    cells = re.findall(r'<td( class="[^"]*")?>(.*?)</td>', row)
    assert [cell for _, cell in cells][3:5] == ["+0.2000", "<code>se</code>"]
    assert cells[7] == (' class="num undecided"', "+0.0400")  # below 0.05: marked undecided
    assert cells[8] == (' class="num decided"', "+0.3500")
    # seed 1's genotype changed at epoch 2: its drawing of epoch 2 lists the change
    assert "normal n1 edge c_k2: max_pool_3x3 -&gt; max_pool_3x3&gt;&gt;se" in text
    assert "genotype last changed at epoch 2" in text


def test_accuracies_are_read_as_fractions_or_percentages():
    assert report_plots.percent([0.1, 0.25, None]) == [10.0, 25.0, None]
    assert report_plots.percent([12.5, 30.0]) == [12.5, 30.0]
    assert report_plots.percent([]) == []


def test_markdown_tables_lists_and_code_become_html():
    text = report_html.markdown_html("## Title\n\n| a | b |\n|---|---:|\n| `x<y` | 1.5 |\n\n- item `c`\n")
    assert "<h3>Title</h3>" in text
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td><code>x&lt;y</code></td>" \
           '<td class="num">1.5</td></tr></table>' in text
    assert "<ul><li>item <code>c</code></li></ul>" in text


# ---------------------------------------------------------------------------------------------
# In a real browser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here with apt-get when missing and this is root; otherwise
    the test is skipped with the reason."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed and cannot be installed here (needs "
                    "root and apt-get): apt-get install chromium")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=environment,
                              timeout=900, check=False)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}: "
                        f"{done.stderr.strip().splitlines()[-1:]})")
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("apt-get installed no chromium executable")
    return found


def _browser(chromium: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_the_page_renders_its_drawings_and_plots_in_headless_chromium(page: Path, tmp_path: Path,
                                                                      chromium: str):
    """Chromium lays the page out and runs its script: every plot (PNG) is decoded with a
    non-zero size and every visible drawing (SVG) has one; the screenshot shows the drawings'
    colours (graphviz's light-blue nodes and green inputs) and the plots' ink, not a blank page."""
    import numpy as np
    from PIL import Image

    url = page.resolve().as_uri()
    dom = _browser(chromium, tmp_path / "profile-dom", "--virtual-time-budget=10000",
                   "--window-size=1400,2000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'data-rendered="([^"]*)"', dom.stdout)
    assert match, "the page's script did not run"
    rendered = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    images = [item for item in rendered if item["kind"] == "img"]
    drawings = [item for item in rendered if item["kind"] == "svg"]
    assert len(images) == 2 * 3 and all(item["loaded"] for item in images), rendered
    assert all(item["width"] > 300 and item["height"] > 100 for item in images), rendered
    # visible drawings: the consensus and the last epoch of each run (earlier ones are hidden)
    assert len(drawings) == 3 and all(item["width"] > 200 and item["height"] > 200
                                      for item in drawings), rendered
    assert {item["id"] for item in drawings} == {"consensus-0", "run-0", "run-1"}

    shot = tmp_path / "page.png"
    result = _browser(chromium, tmp_path / "profile-shot", "--window-size=1400,6000",
                      f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert pixels.shape == (6000, 1400, 3)

    def near(colour: tuple[int, int, int], tolerance: int = 6) -> int:
        return int((np.abs(pixels - np.array(colour)).max(axis=-1) <= tolerance).sum())

    assert near((0xAD, 0xD8, 0xE6)) > 2000  # lightblue: intermediate nodes of the drawings
    assert near((0xB4, 0xEE, 0xB4)) > 2000  # darkseagreen2: the cells' inputs
    ink = int((pixels != 255).any(axis=-1).sum())
    assert ink > 0.1 * pixels.shape[0] * pixels.shape[1]  # not an empty page


def test_trainings_and_unreadable_searches_still_get_a_page(tmp_path: Path):
    """A training run gets its settings and learning curves (top-1 in percent as written); a
    search whose space.geno does not parse gets its page with a note instead of decisiveness."""
    training = tmp_path / "train"
    training.mkdir()
    (training / "config.json").write_text(json.dumps({"dataset": "cifar10", "seed": 0,
                                                      "epochs": 2, "channels": 36}))
    (training / "genotype.geno").write_text(
        (Path(__file__).resolve().parents[2] / "genotypes" / "darts_v2.geno").read_text())
    (training / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "train_acc": 50.0 + e,
         "test_top1": 60.0 + e}) + "\n" for e in (1, 2)))
    search = write_search_run(tmp_path / "search", [HAND_CELLS])
    (search / "space.geno").write_text("space s {}\n")
    target = tmp_path / "page.html"
    result = CliRunner().invoke(cli, ["report", str(training), str(search), "--no-mult-adds",
                                      "--html", str(target)])
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert "<h2>training <code>" in text and "<h2>search <code>" in text
    assert "<p class='note'>no decisiveness: " in text
    assert text.count("data:image/png;base64,") >= 3  # two learning curves, the weights
