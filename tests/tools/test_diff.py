"""`attdarts diff`: semantic changes between genotypes, exit codes like diff(1), and git."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.commands.diff import diff, git_diff_driver
from attdarts.language.transform import parse_text
from attdarts.tools.diff import diff_genotypes, pair_edges

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "genotypes"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("ATTDARTS_UPDATE_GOLDENS") == "1"

# att_darts.geno re-indented, comments rewritten, each node's edges swapped, two independent
# nodes (n1, n2 of the normal cell) in the other order, and `>> identity` spelt out.
ATT_DARTS_REFORMATTED = """\
# a different comment
genotype att_darts { source = "Att-DARTS, Nakai, Matsubara, Uehara, IJCNN 2020, Figure 4 (the authors' ATT_DARTS genotype)"
  normal {
     n0 = sep_conv_3x3(c_k1) >> cbam +
          sep_conv_3x3(c_k2) >> double_attention   # trailing comment
     n2 = sep_conv_3x3(c_k1) >> cbam + skip_connect(c_k2) >> cbam
     n1 = skip_connect(n0) >> cbam + sep_conv_3x3(c_k2) >> cbam
     n3 = skip_connect(n0) >> cbam + skip_connect(c_k2) >> cbam
     c_k = concat(n0, n1, n2, n3) >> identity
  }
  reduce {
     n0 = dil_conv_3x3(c_k1) >> double_attention + max_pool_3x3(c_k2) >> bam
     n1 = skip_connect(n0) >> cbam + avg_pool_3x3(c_k2) >> bam
     n2 = avg_pool_3x3(c_k2) >> bam + skip_connect(n0) >> cbam
     n3 = avg_pool_3x3(c_k2) >> bam + skip_connect(n0) >> cbam
     c_k = concat(n0, n1, n2, n3)
  }
}
"""


def _cell(normal: str, reduce: str = "n0 = max_pool_3x3(c_k2)\n c_k = concat(n0)", name="g") -> str:
    return f"genotype {name} {{\n normal {{\n {normal}\n }}\n reduce {{\n {reduce}\n }}\n}}\n"


def _genotype(text: str):
    return parse_text(text).genotype()


def _changes(a: str, b: str, **options) -> list[str]:
    return [change.text() for change in diff_genotypes(_genotype(a), _genotype(b), **options)]


def test_darts_v1_against_darts_v2_lists_exactly_the_differing_edges() -> None:
    golden = GOLDEN / "diff_darts_v1_darts_v2.txt"
    result = CliRunner().invoke(diff, [str(ZOO / "darts_v1.geno"), str(ZOO / "darts_v2.geno")])
    if UPDATE:
        golden.write_text(result.stdout)
    assert result.exit_code == 1
    assert result.stdout == golden.read_text()
    assert result.stdout == (
        "normal n1 edge c_k2: skip_connect -> sep_conv_3x3\n"
        "normal n3 edge c_k2: sep_conv_3x3 -> skip_connect\n"
        "normal n3 edge n0: skip_connect -> dil_conv_3x3\n"
        "reduce n1 edge c_k2: removed max_pool_3x3\n"
        "reduce n1 edge c_k1: added max_pool_3x3\n"
        "reduce n3 edge c_k2: removed avg_pool_3x3\n"
        "reduce n3 edge c_k1: added max_pool_3x3\n"
    )


def test_reformatted_file_is_the_same(tmp_path: Path) -> None:
    other = tmp_path / "att_darts.geno"
    other.write_text(ATT_DARTS_REFORMATTED)
    for options in ([], ["--meta"], ["--format", "json"]):
        result = CliRunner().invoke(diff, [str(ZOO / "att_darts.geno"), str(other), *options])
        assert result.exit_code == 0, result.output
        if "--format" in options:
            assert json.loads(result.stdout)["same"] is True
        else:
            assert result.stdout == ""


def test_every_zoo_file_equals_itself() -> None:
    for path in sorted(ZOO.glob("*.geno")):
        result = CliRunner().invoke(diff, [str(path), str(path)])
        assert (result.exit_code, result.stdout) == (0, ""), path


def test_attention_change_and_operation_change() -> None:
    a = _cell("n0 = sep_conv_3x3(c_k1) >> se + skip_connect(c_k2)\n c_k = concat(n0)")
    b = _cell("n0 = skip_connect(c_k2) >> cbam + sep_conv_3x3(c_k1) >> cbam\n c_k = concat(n0)")
    assert _changes(a, b) == [
        "normal n0 edge c_k2: skip_connect -> skip_connect>>cbam",
        "normal n0 edge c_k1: sep_conv_3x3>>se -> sep_conv_3x3>>cbam",
    ]


def test_same_input_twice_is_paired_sensibly() -> None:
    # NASNet-A's node 3 reads c_k2 twice: only the edge that changed is reported.
    a = _cell("n0 = avg_pool_3x3(c_k2) + avg_pool_3x3(c_k2)\n c_k = concat(n0)")
    b = _cell("n0 = max_pool_3x3(c_k2) + avg_pool_3x3(c_k2)\n c_k = concat(n0)")
    assert _changes(a, b) == ["normal n0 edge c_k2: avg_pool_3x3 -> max_pool_3x3"]
    # shared operation pairs before shared attention, which pairs before the rest
    a = _cell("n0 = sep_conv_3x3(c_k1) >> se + skip_connect(c_k1) >> cbam\n c_k = concat(n0)")
    b = _cell("n0 = dil_conv_3x3(c_k1) >> cbam + sep_conv_3x3(c_k1) >> bam\n c_k = concat(n0)")
    assert _changes(a, b) == [
        "normal n0 edge c_k1: sep_conv_3x3>>se -> sep_conv_3x3>>bam",
        "normal n0 edge c_k1: skip_connect>>cbam -> dil_conv_3x3>>cbam",
    ]
    # one more edge on the same input: an addition, not a change
    a = _cell("n0 = sep_conv_3x3(c_k1)\n c_k = concat(n0)")
    b = _cell("n0 = sep_conv_3x3(c_k1) + sep_conv_5x5(c_k1)\n c_k = concat(n0)")
    assert _changes(a, b) == ["normal n0 edge c_k1: added sep_conv_5x5"]


def test_pair_edges_directly() -> None:
    a = _genotype(_cell("n0 = sep_conv_3x3(c_k1) + sep_conv_3x3(c_k1)\n c_k = concat(n0)"))
    b = _genotype(_cell("n0 = sep_conv_3x3(c_k1)\n c_k = concat(n0)"))
    pairs, removed, added = pair_edges(list(a.normal.nodes[0].edges), list(b.normal.nodes[0].edges))
    assert (pairs, len(removed), added) == ([], 1, [])


def test_nodes_and_output() -> None:
    a = _cell("n0 = sep_conv_3x3(c_k1)\n n1 = skip_connect(n0)\n c_k = concat(n0, n1)")
    b = _cell("n0 = sep_conv_3x3(c_k1) >> cbam(reduction=8)\n n2 = max_pool_3x3(c_k2) + "
              "skip_connect(n0)\n c_k = concat(n0, n2) >> se")
    assert _changes(a, b) == [
        "normal n0 edge c_k1: sep_conv_3x3 -> sep_conv_3x3>>cbam(reduction=8)",
        "normal n1: removed node skip_connect(n0)",
        "normal n2: added node max_pool_3x3(c_k2) + skip_connect(n0)",
        "normal c_k: concat(n0, n1) -> concat(n0, n2)>>se",
    ]
    # the concatenation order is the channel order: it counts
    a = _cell("n0 = sep_conv_3x3(c_k1)\n n1 = skip_connect(n0)\n c_k = concat(n0, n1)")
    b = _cell("n0 = sep_conv_3x3(c_k1)\n n1 = skip_connect(n0)\n c_k = concat(n1, n0)")
    assert _changes(a, b) == ["normal c_k: concat(n0, n1) -> concat(n1, n0)"]


def test_meta_only_on_request() -> None:
    a = _cell("n0 = sep_conv_3x3(c_k1)\n c_k = concat(n0)").replace("{\n", '{\n source = "x"\n', 1)
    b = _cell("n0 = sep_conv_3x3(c_k1)\n c_k = concat(n0)", name="h")
    assert _changes(a, b) == []
    assert _changes(a, b, meta=True) == ["name: g -> h", 'meta source: removed "x"']


def test_json_format(tmp_path: Path) -> None:
    result = CliRunner().invoke(diff, [str(ZOO / "darts_v1.geno"), str(ZOO / "darts_v2.geno"),
                                       "--format", "json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["same"] is False
    (item,) = payload["items"]
    assert (item["a"], item["b"], item["status"]) == ("darts_v1", "darts_v2", "changed")
    assert item["changes"][0] == {
        "kind": "edge_changed", "cell": "normal", "node": "n1", "input": "c_k2",
        "before": "skip_connect", "after": "sep_conv_3x3",
        "text": "normal n1 edge c_k2: skip_connect -> sep_conv_3x3",
    }
    assert [change["kind"] for change in item["changes"]][3:5] == ["edge_removed", "edge_added"]


def test_files_with_several_genotypes(tmp_path: Path) -> None:
    v1 = (ZOO / "darts_v1.geno").read_text()
    v2 = (ZOO / "darts_v2.geno").read_text()
    att = (ZOO / "att_darts.geno").read_text()
    a = tmp_path / "a.geno"
    b = tmp_path / "b.geno"
    a.write_text(v1 + "\n" + v2)
    b.write_text(v2.replace("dil_conv_3x3(n0)", "dil_conv_5x5(n0)") + "\n" + att)
    result = CliRunner().invoke(diff, [str(a), str(b)])
    assert result.exit_code == 1
    assert result.stdout == (
        "genotype darts_v1: removed\n"
        "genotype darts_v2:\n"
        "    normal n3 edge n0: dil_conv_3x3 -> dil_conv_5x5\n"
        "genotype att_darts: added\n"
    )
    result = CliRunner().invoke(diff, [str(a), str(a), "--a-genotype", "darts_v1",
                                       "--b-genotype", "darts_v2"])
    assert result.exit_code == 1
    assert result.stdout == (GOLDEN / "diff_darts_v1_darts_v2.txt").read_text()
    result = CliRunner().invoke(diff, [str(a), str(b), "--genotype", "darts_v2"])
    assert (result.exit_code, result.stdout) == (1, "normal n3 edge n0: dil_conv_3x3 -> dil_conv_5x5\n")


def test_errors_exit_2_with_clean_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geno"
    bad.write_text("genotype bad {\n    normal {\n        n0 = sep_conv_3x3(c_k1) +\n")
    result = CliRunner().invoke(diff, [str(bad), str(ZOO / "darts_v1.geno")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{bad}:") and "Traceback" not in result.output
    several = tmp_path / "several.geno"
    several.write_text((ZOO / "darts_v1.geno").read_text() + (ZOO / "darts_v2.geno").read_text())
    result = CliRunner().invoke(diff, [str(several), str(ZOO / "darts_v1.geno"), "--b-genotype",
                                       "darts_v1"])
    assert result.exit_code == 2
    assert "several genotypes" in result.stderr and str(several) in result.stderr
    result = CliRunner().invoke(diff, [str(tmp_path / "missing.geno"), str(bad)])
    assert result.exit_code == 2


# ---------------------------------------------------------------------------------------------
# git


def test_git_driver_arguments(tmp_path: Path) -> None:
    old, new = ZOO / "darts_v1.geno", ZOO / "darts_v2.geno"
    arguments = ["cell.geno", str(old), "a" * 40, "100644", str(new), "b" * 40, "100644"]
    result = CliRunner().invoke(git_diff_driver, arguments)
    assert result.exit_code == 0
    assert result.stdout == ("diff --attdarts a/cell.geno b/cell.geno\n--- a/cell.geno\n"
                             "+++ b/cell.geno\n" + (GOLDEN / "diff_darts_v1_darts_v2.txt").read_text()
                             .replace("normal", "name: darts_v1 -> darts_v2\n" + _meta_line() + "normal", 1))
    assert CliRunner().invoke(git_diff_driver, ["only", "three", "args"]).exit_code == 2
    # a new file: a plain diff of the text
    result = CliRunner().invoke(git_diff_driver, ["new.geno", "/dev/null", ".", ".", str(new), "b" * 40,
                                                  "100644"])
    assert result.exit_code == 0 and "--- /dev/null\n+++ b/new.geno\n@@" in result.stdout
    assert "+genotype darts_v2 {" in result.stdout


def test_git_driver_on_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """The reason names the file by its label, not git's temporary copy, and is not itself
    parsed as a genotype ('unexpected character '<'' under the previous message)."""
    old = tmp_path / "git-tmp-copy"
    old.write_bytes(b"\xff\xfegenotype")
    arguments = ["cell.geno", str(old), "a" * 40, "100644", str(ZOO / "darts_v2.geno"), "b" * 40,
                 "100644"]
    result = CliRunner().invoke(git_diff_driver, arguments)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[3:6] == ["# attdarts: not a valid genotype file; plain diff follows",
                          "# a/cell.geno:1:1: file is not UTF-8 text (byte 0xff)",
                          "#   hint: genotype files are UTF-8 text"]
    assert "git-tmp-copy" not in result.stdout and "+genotype darts_v2 {" in lines


def _meta_line() -> str:
    return ('meta source: "DARTS (first order), Liu, Simonyan, Yang, ICLR 2019: DARTS_V1 in the '
            'authors\' genotypes.py" -> "DARTS (second order), Liu, Simonyan, Yang, ICLR 2019: '
            'DARTS_V2 in the authors\' genotypes.py"\n')


def _driver_command() -> str:
    """How git should call the driver: the registered CLI command once cli.py lists it."""
    from attdarts import cli

    if "git-diff-driver" in cli.COMMANDS:
        return f"'{sys.executable}' -m attdarts.cli git-diff-driver"
    return (f"'{sys.executable}' -c 'from attdarts.commands.diff import git_diff_driver; "
            "git_diff_driver()'")


def test_git_uses_the_driver(tmp_path: Path) -> None:
    if shutil.which("git") is None:  # fail, not skip: a silent skip would hide the driver's test
        pytest.fail("git is not installed; this test runs git with attdarts as its diff driver")
    home = tmp_path / "home"
    home.mkdir()
    repository = tmp_path / "repo"
    repository.mkdir()
    environment = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "LC_ALL": "C",
    }

    def git(*arguments: str) -> str:
        result = subprocess.run(["git", *arguments], cwd=repository, env=environment,
                                capture_output=True, text=True, check=True)
        return result.stdout

    git("init", "-q")
    git("config", "diff.attdarts.command", _driver_command())
    (repository / ".gitattributes").write_text("*.geno diff=attdarts\n")
    cell = repository / "cell.geno"
    cell.write_text((ZOO / "att_darts.geno").read_text())
    git("add", ".")
    git("commit", "-q", "-m", "att_darts")

    # layout and comments only
    cell.write_text(ATT_DARTS_REFORMATTED)
    assert git("diff") == ("diff --attdarts a/cell.geno b/cell.geno\n--- a/cell.geno\n"
                           "+++ b/cell.geno\n(no semantic change: layout or comments only)\n")

    # one attention changed
    cell.write_text(ATT_DARTS_REFORMATTED.replace("skip_connect(n0) >> cbam + avg", "skip_connect(n0) >> se + avg"))
    assert git("diff").endswith("+++ b/cell.geno\nreduce n1 edge n0: skip_connect>>cbam -> skip_connect>>se\n")
    git("commit", "-q", "-am", "se")
    assert "reduce n1 edge n0: skip_connect>>cbam -> skip_connect>>se" in git("log", "-p", "--ext-diff")

    # a broken file still shows a (plain) diff, and git does not stop
    cell.write_text("genotype broken {\n")
    output = git("diff")
    assert "not a valid genotype file" in output and "+genotype broken {" in output


def test_markdown_for_pull_requests():
    result = CliRunner().invoke(diff, [str(ZOO / "darts_v1.geno"), str(ZOO / "darts_v2.geno"),
                                       "--format", "markdown"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("### Genotype diff: `") and lines[0].endswith("darts_v2.geno`")
    assert lines[2] == "**7 changes** (normal: 3, reduce: 4)"
    assert lines[4:6] == ["| cell | node | input | before | after |", "|---|---|---|---|---|"]
    assert "| normal | n1 | c_k2 | `skip_connect` | `sep_conv_3x3` |" in lines
    assert "| reduce | n1 | c_k2 | `max_pool_3x3` | – |" in lines
    assert "| reduce | n1 | c_k1 | – | `max_pool_3x3` |" in lines
    assert len([line for line in lines if line.startswith("| normal") or
                line.startswith("| reduce")]) == 7
    same = CliRunner().invoke(diff, [str(ZOO / "darts_v1.geno"), str(ZOO / "darts_v1.geno"),
                                     "--format", "markdown"])
    assert same.exit_code == 0 and "No semantic difference" in same.output


def test_render_writes_the_side_by_side_drawing(tmp_path):
    if shutil.which("dot") is None:
        pytest.fail("graphviz 'dot' is not installed; this test needs it (apt-get install graphviz)")
    target = tmp_path / "diff.svg"
    result = CliRunner().invoke(diff, [str(ZOO / "darts_v1.geno"), str(ZOO / "darts_v2.geno"),
                                       "--render", str(target)])
    assert result.exit_code == 1, result.output
    svg = target.read_text()
    assert "darts_v1.geno: normal cell" in svg and "darts_v2.geno: reduction cell" in svg
    both = tmp_path / "both.geno"
    both.write_text((ZOO / "darts_v1.geno").read_text() + "\n" + (ZOO / "darts_v2.geno").read_text())
    result = CliRunner().invoke(diff, [str(both), str(both), "--render", str(tmp_path / "x.svg")])
    assert result.exit_code == 2 and "--render draws one pair of genotypes" in result.output
    result = CliRunner().invoke(diff, [str(both), str(both), "--a-genotype", "darts_v1",
                                       "--b-genotype", "darts_v2", "--render",
                                       str(tmp_path / "x.png")])
    assert result.exit_code == 1 and (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(diff, [str(both), str(both), "--genotype", "darts_v1",
                                       "--render", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and "cannot tell the format" in result.output
