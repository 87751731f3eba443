"""`attdarts render`: deterministic DOT pinned by goldens, SVG when graphviz is installed.

Regenerate the goldens after a deliberate style change with
`ATTDARTS_UPDATE_GOLDENS=1 pytest tests/tools/test_render.py` and look at the pictures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.commands.render import render
from attdarts.language.transform import parse_file, parse_text
from attdarts.tools import render as render_module
from attdarts.tools.render import genotype_dot

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "genotypes"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
PINNED = ("att_darts", "nasnet_a")
UPDATE = os.environ.get("ATTDARTS_UPDATE_GOLDENS") == "1"


@pytest.fixture
def dot() -> str:
    """graphviz's `dot`: a test that needs it fails, loudly, where it is missing (no silent skip)."""
    executable = shutil.which("dot")
    if executable is None:
        pytest.fail("graphviz 'dot' is not installed; these tests need it (apt-get install graphviz)")
    return executable


SMALL = """
genotype small {
    normal {
        n0 = sep_conv_3x3(c_k2) >> bam(combine=product) + sep_conv_3x3(c_k1) >> ge_theta_plus
        custom = skip_connect(n0) + max_pool_3x3(c_k1) >> identity
        c_k = concat(n0, custom) >> cbam
    }
    reduce {
        n0 = max_pool_3x3(c_k2) + max_pool_3x3(c_k1)
        c_k = concat(n0)
    }
}
"""


def _genotype(name: str):
    return parse_file(ZOO / f"{name}.geno").genotype()


@pytest.mark.parametrize("name", PINNED)
def test_dot_matches_golden(name: str) -> None:
    golden = GOLDEN / f"render_{name}.dot"
    text = genotype_dot(_genotype(name))
    if UPDATE:
        golden.write_bytes(text.encode("utf-8"))
    assert text.encode("utf-8") == golden.read_bytes()


@pytest.mark.parametrize("name", PINNED)
def test_cli_prints_golden_dot(name: str) -> None:
    result = CliRunner().invoke(render, [str(ZOO / f"{name}.geno")])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == (GOLDEN / f"render_{name}.dot").read_bytes()


def test_every_zoo_genotype_renders_deterministically() -> None:
    for path in sorted(ZOO.glob("*.geno")):
        genotype = parse_file(path).genotype()
        assert genotype_dot(genotype) == genotype_dot(parse_file(path).genotype())


def test_one_cell_only() -> None:
    text = genotype_dot(_genotype("att_darts"), ["reduce"])
    assert '"cluster_reduce"' in text and "normal" not in text
    result = CliRunner().invoke(render, [str(ZOO / "att_darts.geno"), "--cell", "normal"])
    assert result.exit_code == 0
    assert '"cluster_normal"' in result.output and "reduce/" not in result.output


def test_labels_show_operation_attention_and_output_attention() -> None:
    text = genotype_dot(parse_text(SMALL).genotype())
    # attention on a second line, in the attention colour, with the paper's names
    assert "<tr><td>sep_conv_3x3</td></tr>" in text
    assert 'color="#b2182b"><i>BAM<font point-size="9">(combine=product)</font></i>' in text
    assert "GE-θ<sup>+</sup>" in text
    # identity attention: no second line
    assert "<tr><td>max_pool_3x3</td></tr></table>" in text
    # attention on the concatenated output: its own box between the nodes and c_k
    assert '"normal/c_k/attention" [label=<<i>CBAM</i>>' in text
    assert '"normal/custom" -> "normal/c_k/attention"' in text
    assert '"normal/c_k/attention" -> "normal/c_k"' in text
    assert '"reduce/n0" -> "reduce/c_k"' in text
    # nodes n0, n1 are drawn as 0, 1 (Figure 4); other names as they are
    assert '"normal/n0" [label=<0>' in text and '"normal/custom" [label=<custom>' in text
    assert "<i>c</i><sub><i>k</i>−2</sub>" in text


@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_renders_files_with_graphviz(tmp_path: Path, suffix: str, dot: str) -> None:
    target = tmp_path / f"cell.{suffix}"
    result = CliRunner().invoke(render, [str(ZOO / "att_darts.geno"), "-o", str(target)])
    assert result.exit_code == 0, result.output
    data = target.read_bytes()
    magic = {"svg": b"<svg", "png": b"\x89PNG", "pdf": b"%PDF"}[suffix]
    assert magic in data[:400]
    if suffix == "svg":
        text = data.decode("utf-8")
        assert "sep_conv_3x3" in text and "CBAM" in text and "reduction cell" in text


def test_golden_dot_is_valid_graphviz(tmp_path: Path, dot: str) -> None:
    for name in PINNED:
        svg = render_module.run_dot((GOLDEN / f"render_{name}.dot").read_text("utf-8"), "svg")
        assert svg.startswith(b"<?xml") and b"</svg>" in svg


# ---------------------------------------------------------------------------------------------
# Layout: measured on dot's own layout (-Tjson), in points


def _layout(dot_executable: str, dot_text: str) -> tuple[dict[str, tuple], list[tuple]]:
    """(boxes by node name, edges as (tail, head, points on the drawn spline))."""
    result = subprocess.run([dot_executable, "-Tjson"], input=dot_text.encode("utf-8"),
                            capture_output=True, check=True)
    layout = json.loads(result.stdout)
    boxes, names = {}, {}
    for obj in layout["objects"]:
        names[obj["_gvid"]] = obj["name"]
        if "pos" in obj and "width" in obj and float(obj["width"]) > 0:
            x, y = map(float, obj["pos"].split(","))
            half_width, half_height = float(obj["width"]) * 36, float(obj["height"]) * 36
            boxes[obj["name"]] = (x - half_width, y - half_height, x + half_width, y + half_height)
    edges = []
    for edge in layout["edges"]:
        if edge.get("style") == "invis":
            continue
        points = []
        for operation in edge["_draw_"]:
            if operation["op"] in ("b", "B"):  # cubic Bezier pieces: sample the curve itself
                controls = operation["points"]
                for start in range(0, len(controls) - 3, 3):
                    p0, p1, p2, p3 = controls[start:start + 4]
                    for step in range(41):
                        t = step / 40
                        points.append(tuple((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b
                                            + 3 * (1 - t) * t ** 2 * c + t ** 3 * d
                                            for a, b, c, d in zip(p0, p1, p2, p3)))
        edges.append((names[edge["tail"]], names[edge["head"]], points))
    return boxes, edges


def _distance(point: tuple[float, float], box: tuple[float, ...]) -> float:
    x, y = point
    left, bottom, right, top = box
    return (max(left - x, 0, x - right) ** 2 + max(bottom - y, 0, y - top) ** 2) ** 0.5


# An edge of one input passing this close to the other input reads as that input's edge.
INPUT_CLEARANCE = 20.0


@pytest.mark.parametrize("cells", [("normal", "reduce"), ("normal",), ("reduce",)], ids="-".join)
@pytest.mark.parametrize("path", sorted(ZOO.glob("*.geno")), ids=lambda p: p.stem)
def test_no_edge_crosses_an_unrelated_box_or_passes_the_other_input(path: Path, cells, dot: str):
    """Issue 11, item 21: amoebanet_a's reduce `sep_conv_7x7 -> 2` ran from c_k2 down past c_k1."""
    genotype = parse_file(path).genotype()
    boxes, edges = _layout(dot, genotype_dot(genotype, cells))
    assert edges and len(boxes) >= 10  # FairDARTS-a's normal cell alone: 3 nodes, 10 boxes
    for tail, head, points in edges:
        assert points, (tail, head)
        for name, box in boxes.items():
            if name in (tail, head):
                continue
            closest = min(_distance(point, box) for point in points)
            assert closest > 0, f"{tail} -> {head} crosses the box of {name}"
            kind, _, node = name.partition("/")
            if node in ("c_k2", "c_k1"):
                assert closest >= INPUT_CLEARANCE, \
                    f"{tail} -> {head} passes {closest:.1f} pt from {name}"


def test_synthetic_genotype_is_labelled_on_the_drawing() -> None:
    """Issue 11, item 20: a genotype searched on random data says so on its drawing."""
    note = "random images and labels: a smoke test, not a real search"
    text = SMALL.replace("genotype small {", f'genotype small {{\n    synthetic = "{note}"', 1)
    dot_text = genotype_dot(parse_text(text).genotype())
    assert f"label=<<b>SYNTHETIC DATA: {note}</b>>;" in dot_text
    assert "labelloc=t" in dot_text
    # after both cells, so that neither cluster inherits it
    assert dot_text.index("SYNTHETIC DATA") > dot_text.index('"cluster_normal"')
    assert "SYNTHETIC" not in genotype_dot(parse_text(SMALL).genotype())
    escaped = genotype_dot(parse_text(text.replace(note, "a < b & c")).genotype())
    assert "SYNTHETIC DATA: a &lt; b &amp; c</b>" in escaped


def test_dot_output_needs_no_graphviz(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(render_module, "dot_executable", lambda: None)
    target = tmp_path / "cell.dot"
    result = CliRunner().invoke(render, [str(ZOO / "nasnet_a.geno"), "-o", str(target)])
    assert result.exit_code == 0
    assert target.read_bytes() == (GOLDEN / "render_nasnet_a.dot").read_bytes()


def test_missing_graphviz_writes_dot_and_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(render_module, "dot_executable", lambda: None)
    target = tmp_path / "cell.svg"
    result = CliRunner().invoke(render, [str(ZOO / "att_darts.geno"), "-o", str(target)])
    assert result.exit_code == 1
    assert not target.exists()
    assert (tmp_path / "cell.dot").read_bytes() == (GOLDEN / "render_att_darts.dot").read_bytes()
    for hint in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert hint in result.stderr
    assert "Traceback" not in result.output


def test_unknown_suffix_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(render, [str(ZOO / "att_darts.geno"), "-o", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2
    assert "x.jpg" in result.output and not (tmp_path / "x.jpg").exists()


def test_bad_input_is_a_clean_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.geno"
    path.write_text("genotype bad {\n    normal {\n        n0 = sep_conv_3x4(c_k1)\n")
    result = CliRunner().invoke(render, [str(path)])
    assert result.exit_code == 2
    assert f"{path}:3:" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(render, [str(ZOO / "att_darts.geno"), "--genotype", "nope"])
    assert result.exit_code == 2
    assert "no genotype named 'nope'" in result.stderr


def test_render_and_diff_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from attdarts.commands.render import render\n"
        "from attdarts.commands.diff import diff, git_diff_driver\n"
        "import attdarts.tools.render, attdarts.tools.diff\n"
        f"CliRunner().invoke(render, [{str(ZOO / 'att_darts.geno')!r}])\n"
        f"CliRunner().invoke(diff, [{str(ZOO / 'darts_v1.geno')!r}, {str(ZOO / 'darts_v2.geno')!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Architecture weights on the drawing (--weights) and side-by-side diffs


HAND_OTHER = """\
genotype other {
    normal {
        n0 = max_pool_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
    reduce {
        n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
}
"""


def _hand_run(tmp_path: Path) -> Path:
    from helpers import HAND_CELLS, write_search_run

    return write_search_run(tmp_path / "run", [HAND_CELLS])


def test_weights_set_width_opacity_and_notes_by_hand(tmp_path: Path) -> None:
    """Hand weights (tests/helpers.py): n0<-c_k2 keeps sep_conv_3x3 at 0.4, 0.1 ahead of
    skip_connect; n1<-c_k2's attention is a tie (margin 0: opacity 25 %); n1<-n0 leads by 0.04
    at least (opacity 0.25 + 0.75 * 0.04 / 0.05 = 85 %)."""
    from attdarts.tools.search_runs import decide_with_run

    run = _hand_run(tmp_path)
    genotype = parse_file(run / "genotype.geno").genotype()
    decided, epoch = decide_with_run(genotype, run)
    assert epoch == 1
    styles = render_module.weight_styles(genotype, decided)
    first = styles[("normal", "n0", 0)]
    assert first.penwidth == pytest.approx(1 + 6 * 0.4)
    assert first.color == "#404040ff"  # decided by 0.1 >= 0.05: opaque
    assert first.notes == ("α 0.400, lead +0.100", "β 0.550, lead +0.100")
    tie = styles[("normal", "n1", 0)]
    assert tie.color == f"#404040{round(255 * 0.25):02x}"
    assert tie.notes == ("α 0.600, lead +0.400", "β 0.500, lead +0.000", "input lead +0.500")
    assert styles[("normal", "n1", 1)].color == f"#404040{round(255 * 0.85):02x}"
    assert styles[("reduce", "n1", 1)].penwidth == pytest.approx(1 + 6 * 0.45)
    # a genotype the weights do not favour: negative leads, drawn as faint as a tie, not hidden
    other = parse_text(HAND_OTHER).genotype()
    faint = render_module.weight_styles(other, decide_with_run(other, run)[0])[("normal", "n0", 0)]
    assert faint.notes[0] == "α 0.200, lead -0.200"
    assert faint.color == f"#404040{round(255 * 0.25):02x}"
    text = genotype_dot(genotype, styles=styles, legend="a legend")
    assert '"normal/c_k2":e -> "normal/n0/0":w [arrowhead=none, penwidth=3.40, color="#404040ff"];' in text
    assert '"normal/n0/0":e -> "normal/n0":w [penwidth=3.40, color="#404040ff"];' in text
    assert "α 0.400, lead +0.100" in text and ">a legend</font>>;" in text


def test_cli_draws_a_runs_weights_and_refuses_bad_epochs(tmp_path: Path, dot: str) -> None:
    run = _hand_run(tmp_path)
    result = CliRunner().invoke(render, [str(run / "genotype.geno"), "--weights", str(run)])
    assert result.exit_code == 0, result.output
    assert "weights of run at epoch 1." in result.output and "input lead +0.350" in result.output
    target = tmp_path / "weights.svg"
    result = CliRunner().invoke(render, [str(run / "genotype.geno"), "--weights", str(run),
                                         "--epoch", "1", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "lead +0.100" in target.read_text()
    result = CliRunner().invoke(render, [str(run / "genotype.geno"), "--weights", str(run),
                                         "--epoch", "3"])
    assert result.exit_code == 2
    assert result.output.strip().endswith("weights.jsonl has no epoch 3 (it has 1-1)")
    result = CliRunner().invoke(render, [str(ZOO / "att_darts.geno"), "--weights", str(run)])
    assert result.exit_code == 2  # four nodes against a two-node space
    assert "the normal cell has 4 nodes, the space 'tiny' has 2" in result.output
    result = CliRunner().invoke(render, [str(run / "genotype.geno"), "--epoch", "1"])
    assert result.exit_code == 2 and "needs --weights RUN" in result.output


def test_diff_drawing_highlights_what_changed_on_each_side(dot: str) -> None:
    a, b = _genotype("darts_v1"), _genotype("darts_v2")
    before, after = render_module.diff_styles(a, b)
    # normal n1 <- c_k2: skip_connect -> sep_conv_3x3 (changed: both sides); reduce n1: c_k2
    # removed (A only), c_k1 added (B only); unchanged edges are plain
    assert ("normal", "n1", 0) in before and ("normal", "n1", 0) in after
    assert a.normal.nodes[1].edges[0].input == "c_k2"

    def edges(genotype, keys):
        return sorted((node, genotype.cell(kind).nodes[int(node[1])].edges[position].input)
                      for kind, node, position in keys if kind == "reduce")

    assert edges(a, before) == [("n1", "c_k2"), ("n3", "c_k2")]
    assert edges(b, after) == [("n1", "c_k1"), ("n3", "c_k1")]
    assert len(before) == len(after) == 5
    text = render_module.diff_dot(a, b, titles=("v1", "v2"))
    assert '"cluster_a/normal"' in text and '"cluster_b/reduce"' in text
    assert "<b>v1: normal cell</b>" in text and "<b>v2: reduction cell</b>" in text
    assert '"a/normal/c_k" -> "b/normal/c_k2" [style=invis, minlen=2];' in text
    svg = render_module.run_dot(text, "svg").decode()
    assert svg.count(render_module.HIGHLIGHT_BEFORE) >= 5
    assert svg.count(render_module.HIGHLIGHT_AFTER) >= 5
    same_before, same_after = render_module.diff_styles(a, a)
    assert not same_before and not same_after
