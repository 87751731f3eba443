"""Reading genotype files: a UTF-8 byte-order mark is accepted, and `fmt` drops it."""

from __future__ import annotations

import codecs
from pathlib import Path

from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.files import decode_source
from attdarts.language.transform import parse_file

ROOT = Path(__file__).resolve().parent.parent
CANONICAL = (ROOT / "genotypes" / "darts_v2.geno").read_text()
BOM = codecs.BOM_UTF8


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "windows.geno"
    path.write_bytes(BOM + CANONICAL.encode("utf-8"))
    assert decode_source(path.read_bytes()) == CANONICAL
    assert parse_file(path) == parse_file(ROOT / "genotypes" / "darts_v2.geno")
    assert _run("check", path).exit_code == 0


def test_columns_on_line_one_ignore_the_byte_order_mark(tmp_path):
    path = tmp_path / "bad.geno"
    path.write_bytes(BOM + b"genotype 1x {\n}\n")
    result = _run("check", path)
    assert result.exit_code == 1
    assert f"{path}:1:10:" in result.output  # '1x' is the tenth visible character
    assert "\ufeff" not in result.output


def test_fmt_drops_the_byte_order_mark(tmp_path):
    path = tmp_path / "windows.geno"
    path.write_bytes(BOM + CANONICAL.encode("utf-8"))
    check = _run("fmt", "--check", path)
    assert check.exit_code == 1 and f"would reformat {path}" in check.output
    assert _run("fmt", path).exit_code == 0
    assert path.read_bytes() == CANONICAL.encode("utf-8")
    assert _run("fmt", "--check", path).exit_code == 0


def test_non_utf8_after_a_byte_order_mark_is_located(tmp_path):
    path = tmp_path / "latin1.geno"
    path.write_bytes(BOM + b"# caf\xe9\n")
    result = _run("check", path)
    assert result.exit_code == 1 and f"{path}:1:6: file is not UTF-8 text (byte 0xe9)" in result.output
