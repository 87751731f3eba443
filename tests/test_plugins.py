"""Plug-ins (attdarts.plugins, `attdarts --plugin`, $ATTDARTS_PLUGINS, entry points of group
`attdarts.plugins`): a plug-in's names work and are checked like built-in ones; a clash or a
failure is one warning naming the plug-in and changes nothing else; the front end stays
torch-free; and the shipped example (examples/plugin/) installs and runs through every command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts import plugins
from attdarts.cli import cli
from attdarts.language import catalog
from attdarts.language.errors import DslError
from attdarts.language.transform import parse_text

ROOT = Path(__file__).resolve().parent.parent

# a plug-in in two files, as examples/plugin/ is: torch-free registrations, torch code apart
REGISTRATIONS = '''
from attdarts.language.catalog import Dataset, Entry, Parameter, register, register_dataset

register(Entry("mean_gate", "attention", {"scale": Parameter(float, 1.0)},
               factory="layers_of_mean_gate:mean_gate", label="MeanGate"))
register_dataset(Dataset("tiny-set", "layers_of_mean_gate:load_tiny", "eight random images"))
'''
LAYERS = '''
import torch
from torch import nn

from attdarts.networks.attentions.base import MaskingAttention
from attdarts.runs.data import synthetic_dataset


class MeanGate(MaskingAttention):
    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def mask(self, x):
        return torch.sigmoid(self.scale * x.mean(dim=(2, 3), keepdim=True))


def mean_gate(channels, *, spatial, scale=1.0):
    return MeanGate(scale)


def load_tiny(*, train, root, download, workers):
    return synthetic_dataset(train=train, size=8, num_classes=4, resolution=8)
'''
GENOTYPE = """genotype g {
    normal {
        n0 = sep_conv_3x3(c_k2) >> ATTENTION + skip_connect(c_k1)
        c_k = concat(n0)
    }
    reduce {
        n0 = max_pool_3x3(c_k2) + skip_connect(c_k1)
        c_k = concat(n0)
    }
}
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder for plug-in modules on sys.path; the catalog, the loaded plug-ins and sys.modules
    are put back afterwards."""
    saved_tables = [dict(table) for table in plugins.tables()]
    saved_loaded = dict(plugins._LOADED)
    saved_modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.ENVIRONMENT, raising=False)
    yield tmp_path
    for table, saved in zip(plugins.tables(), saved_tables):
        table.clear()
        table.update(saved)
    plugins._LOADED.clear()
    plugins._LOADED.update(saved_loaded)
    for name in set(sys.modules) - saved_modules:
        module = sys.modules[name]
        if str(tmp_path) in str(getattr(module, "__file__", "") or ""):
            del sys.modules[name]


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _load(*modules, **options):
    warnings: list[str] = []
    options.setdefault("entry_points", False)
    options.setdefault("environment", {})
    tried = plugins.load(modules, warn=warnings.append, **options)
    return tried, warnings


# ---------------------------------------------------------------------------------------------
# The loader, in process


def test_a_plugin_adds_an_attention_and_a_dataset_credited_to_it(plugin_dir):
    _write(plugin_dir, "mean_gate_plugin.py", REGISTRATIONS)
    _write(plugin_dir, "layers_of_mean_gate.py", LAYERS)
    (plugin,), warnings = _load("mean_gate_plugin")
    assert warnings == [] and plugin.error is None
    assert plugin.name == "mean_gate_plugin" and plugin.source == "--plugin"
    assert plugin.added == ("mean_gate", "tiny-set")
    assert catalog.ATTENTIONS["mean_gate"].origin == "mean_gate_plugin"
    assert catalog.DATASETS["tiny-set"].origin == "mean_gate_plugin"
    assert "layers_of_mean_gate" not in sys.modules  # its torch factory: imported when built
    # its names are checked like built-in ones: keywords, did-you-mean, located errors
    genotype = parse_text(GENOTYPE.replace("ATTENTION", "mean_gate(scale=2.5)")).genotype()
    assert genotype.normal.nodes[0].edges[0].attention.kwargs == (("scale", 2.5),)
    with pytest.raises(DslError) as caught:
        parse_text(GENOTYPE.replace("ATTENTION", "mean_gte"), "g.geno")
    rendered = caught.value.render()
    assert "g.geno:3:36: unknown attention 'mean_gte'" in rendered
    assert "did you mean 'mean_gate'?" in rendered
    with pytest.raises(DslError, match="unknown keyword 'scal' for attention 'mean_gate'"):
        parse_text(GENOTYPE.replace("ATTENTION", "mean_gate(scal=2)"))


def test_a_plugins_attention_and_dataset_build_and_load(plugin_dir, one_thread):
    import torch

    from attdarts.networks.network import compile_network
    from attdarts.runs import data

    _write(plugin_dir, "mean_gate_plugin.py", REGISTRATIONS)
    _write(plugin_dir, "layers_of_mean_gate.py", LAYERS)
    _load("mean_gate_plugin")
    genotype = parse_text(GENOTYPE.replace("ATTENTION", "mean_gate(scale=2.5)")).genotype()
    network = compile_network(genotype, channels=4, layers=3, num_classes=4, input_size=8,
                              auxiliary=False)
    gates = [m for m in network.modules() if type(m).__name__ == "MeanGate"]
    assert gates and all(m.scale.item() == 2.5 for m in gates)
    logits = network(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 4)
    assert data.parse_spec("Tiny-Set").kind == "tiny-set"
    split = data.load_dataset("tiny-set", None, train=True)
    assert len(split) == 8 and split.num_classes == 4
    with pytest.raises(data.DataError, match="did you mean 'tiny-set'"):
        data.parse_spec("tiny-sett")


def test_a_clash_with_a_built_in_is_refused_naming_both_and_undone(plugin_dir):
    _write(plugin_dir, "clashing_plugin.py", '''
        from attdarts.language.catalog import Entry, register
        register(Entry("fresh_name", "attention", factory="nowhere:fresh_name"))
        register(Entry("se", "attention", factory="nowhere:se"))
    ''')
    (plugin,), warnings = _load("clashing_plugin")
    assert warnings == [
        "plug-in 'clashing_plugin' (--plugin) not loaded: DuplicateNameError: attention 'se' of "
        "'clashing_plugin' refused: the attention 'se' is already in the catalog (from "
        "'attdarts')"]
    assert "fresh_name" not in catalog.ATTENTIONS  # its registrations are undone
    assert catalog.ATTENTIONS["se"].origin == "attdarts"
    # two plug-ins with one name: the second is refused naming the first
    _write(plugin_dir, "first_plugin.py", '''
        from attdarts.language.catalog import Dataset, register_dataset
        register_dataset(Dataset("shared-set", "nowhere:load"))
    ''')
    _write(plugin_dir, "second_plugin.py", '''
        from attdarts.language.catalog import Dataset, register_dataset
        register_dataset(Dataset("shared-set", "elsewhere:load"))
    ''')
    _, warnings = _load("first_plugin", "second_plugin")
    assert len(warnings) == 1 and "'second_plugin'" in warnings[0]
    assert "already registered (from 'first_plugin')" in warnings[0]


def test_a_plugin_that_fails_is_one_line_and_the_others_still_load(plugin_dir):
    _write(plugin_dir, "raising_plugin.py", "raise RuntimeError('no licence\\nsecond line')\n")
    _write(plugin_dir, "broken_syntax_plugin.py", "def (:\n")
    _write(plugin_dir, "good_plugin.py", '''
        from attdarts.language.catalog import Entry, register
        register(Entry("good_op", "operation", factory="nowhere:good_op"))
    ''')
    tried, warnings = _load("missing_plugin_module", "raising_plugin", "broken_syntax_plugin",
                            "good_plugin")
    assert [p.error is None for p in tried] == [False, False, False, True]
    assert len(warnings) == 3 and all("\n" not in line for line in warnings)
    assert warnings[0] == ("plug-in 'missing_plugin_module' (--plugin) not loaded: "
                           "ModuleNotFoundError: No module named 'missing_plugin_module'")
    assert warnings[1] == ("plug-in 'raising_plugin' (--plugin) not loaded: RuntimeError: "
                           "no licence")
    assert warnings[2].startswith("plug-in 'broken_syntax_plugin' (--plugin) not loaded: "
                                  "SyntaxError")
    assert catalog.OPERATIONS["good_op"].origin == "good_plugin"


def test_names_come_from_the_environment_by_path_and_load_once(plugin_dir):
    for name in ("env_a", "env_b"):
        _write(plugin_dir, f"{name}.py", f'''
            from attdarts.language.catalog import Entry, register
            register(Entry("{name}_op", "operation", factory="nowhere:{name}_op"))
        ''')
    single = _write(plugin_dir / "elsewhere", "by_path_plugin.py", '''
        from attdarts.language.catalog import Entry, register
        register(Entry("by_path_op", "operation", factory="by_path_plugin:by_path_op"))
    ''')
    variable = f" env_a ,{os.pathsep}env_b,"
    tried, warnings = _load(str(single), environment={plugins.ENVIRONMENT: variable})
    assert warnings == []
    assert [(p.name, p.source) for p in tried] == [
        ("by_path_plugin", "--plugin"), ("env_a", plugins.ENVIRONMENT),
        ("env_b", plugins.ENVIRONMENT)]
    assert str(single.parent) in sys.path  # its factories' dotted paths import
    assert _load("env_a", str(single)) == ([], [])  # loaded once per process
    assert {p.name for p in plugins.loaded()} >= {"by_path_plugin", "env_a", "env_b"}


def test_installed_entry_points_are_found(plugin_dir):
    """A distribution's entry point of group attdarts.plugins, as pip writes it (dist-info with
    entry_points.txt), pointing at module:function."""
    info = plugin_dir / "attdarts_fake-1.0.dist-info"
    _write(info, "METADATA", "Metadata-Version: 2.1\nName: attdarts-fake\nVersion: 1.0\n")
    _write(info, "entry_points.txt", "[attdarts.plugins]\nfake = fake_entry_module:setup\n")
    _write(plugin_dir, "fake_entry_module.py", '''
        from attdarts.language.catalog import Entry, register

        def setup():
            register(Entry("fake_op", "operation", factory="fake_entry_module:fake_op"))
    ''')
    tried, warnings = _load(entry_points=True)
    fake = [p for p in tried if p.name == "fake"]
    assert warnings == [] and fake == [plugins.Plugin(
        "fake", "entry point", "fake_entry_module:setup", added=("fake_op",))]
    assert catalog.OPERATIONS["fake_op"].origin == "fake"


def test_register_refuses_what_the_dsl_cannot_name():
    with pytest.raises(ValueError, match="not a lower_snake DSL name"):
        catalog.register(catalog.Entry("Mean-Gate", "attention", factory="a:b"))
    with pytest.raises(ValueError, match="is not a dotted path"):
        catalog.register(catalog.Entry("mean_gate", "attention", factory="a.b.c"))
    with pytest.raises(ValueError, match="keyword 'Scale'"):
        catalog.register(catalog.Entry("mean_gate", "attention", {
            "Scale": catalog.Parameter(float, 1.0)}, factory="a:b"))
    with pytest.raises(ValueError, match="not 'folder'"):
        catalog.register_dataset(catalog.Dataset("folder", "a:b"))
    assert "mean_gate" not in catalog.ATTENTIONS and "folder" not in catalog.DATASETS


# ---------------------------------------------------------------------------------------------
# The command line, and torch


def test_cli_loads_plugins_and_a_broken_one_does_not_stop_a_command(plugin_dir, monkeypatch):
    _write(plugin_dir, "mean_gate_plugin.py", REGISTRATIONS)
    geno = _write(plugin_dir, "g.geno", GENOTYPE.replace("ATTENTION", "mean_gate"))
    monkeypatch.setenv(plugins.ENVIRONMENT, "absent_plugin_from_env")
    result = CliRunner().invoke(cli, ["--plugin", "mean_gate_plugin", "--plugin",
                                      "absent_plugin_module", "check", str(geno)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines == [
        "attdarts: warning: plug-in 'absent_plugin_module' (--plugin) not loaded: "
        "ModuleNotFoundError: No module named 'absent_plugin_module'",
        "attdarts: warning: plug-in 'absent_plugin_from_env' (ATTDARTS_PLUGINS) not loaded: "
        "ModuleNotFoundError: No module named 'absent_plugin_from_env'"]
    assert "Traceback" not in result.output


def test_loading_a_plugin_keeps_the_front_end_torch_free(tmp_path):
    _write(tmp_path, "mean_gate_plugin.py", REGISTRATIONS)
    _write(tmp_path, "layers_of_mean_gate.py", LAYERS)
    geno = _write(tmp_path, "g.geno", GENOTYPE.replace("ATTENTION", "mean_gate(scale=3)"))
    code = ("import sys\n"
            "from attdarts import plugins\n"
            "from attdarts.api import check_file\n"
            "import attdarts\n"
            "attdarts.zoo_names  # the top-level API loads $ATTDARTS_PLUGINS first\n"
            "assert [p.name for p in plugins.loaded()] == ['mean_gate_plugin']\n"
            f"assert check_file({str(geno)!r}) == []\n"
            "assert 'torch' not in sys.modules\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
                   plugins.ENVIRONMENT: "mean_gate_plugin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# The shipped example, installed as a user would


def _attdarts(args, environment, cwd):
    return subprocess.run([sys.executable, "-m", "attdarts.cli", *map(str, args)], cwd=cwd,
                          env=environment, capture_output=True, text=True)


@pytest.mark.slow
def test_the_example_plugin_installs_and_runs_through_every_command(tmp_path):
    """pip installs examples/plugin/ into a private folder (no attdarts change); check, compile,
    a tiny search, render and export-model then use its `gct` through the entry point."""
    source = shutil.copytree(ROOT / "examples" / "plugin", tmp_path / "source")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(site),
                          str(source)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),
                   "OMP_NUM_THREADS": "1"}
    environment.pop(plugins.ENVIRONMENT, None)
    space = source / "gct_space.geno"

    def run(*args):
        result = _attdarts(args, environment, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr
        return result.stdout

    run("check", space)
    assert "weights      " in run("compile", space, "--channels", "4", "--layers", "3")
    run("search", space, "--dataset", "synthetic", "--device", "cpu", "--quiet", "--channels", "4",
        "--layers", "3", "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "2",
        "--seed", "0", "--out", tmp_path / "search")
    genotype = tmp_path / "search" / "genotype.geno"
    # a cell with gct on every edge, so that render and export see it whatever the search chose
    assert "genotype att_darts_gct_seed0 {" in genotype.read_text()
    with_gct = tmp_path / "gct.geno"
    with_gct.write_text(re.sub(r"(\w+\((?:c_k\d|n\d)\))( >> \w+)?", r"\1 >> gct",
                               genotype.read_text()))
    assert with_gct.read_text().count(">> gct") == 16  # every edge of both cells
    run("check", with_gct)
    run("render", with_gct, "-o", tmp_path / "gct.dot")
    assert "<i>GCT</i>" in (tmp_path / "gct.dot").read_text()
    exported = run("export-model", with_gct, "-o", tmp_path / "gct.onnx", "--channels", "4",
                   "--layers", "3")
    difference = float(re.search(r"largest difference from PyTorch (\S+)", exported).group(1))
    assert difference < 1e-4
    # the authors' genotype formats have no GCT: refused at its place, one line
    refused = _attdarts(["export", with_gct, "--format", "att-darts-py"], environment, tmp_path)
    assert refused.returncode == 1
    assert "attention 'gct' is not in the Att-DARTS authors' code" in refused.stderr
    assert "Traceback" not in refused.stderr
    # without the plug-in the same file is an unknown attention, not a crash
    bare = {**environment, "PYTHONPATH": str(ROOT)}
    missing = _attdarts(["check", with_gct], bare, tmp_path)
    assert missing.returncode == 1 and "unknown attention 'gct'" in missing.stderr


def test_every_dataset_loader_path_resolves():
    from attdarts.networks.registry import resolve

    for entry in catalog.DATASETS.values():
        loader = resolve(entry.factory)
        assert callable(loader) and loader.__name__ == entry.factory.partition(":")[2]
    assert "cifar10-mini" in catalog.DATASETS and catalog.FOLDER not in catalog.DATASETS


def test_a_factory_that_cannot_be_imported_is_one_line_naming_its_plugin(plugin_dir):
    _write(plugin_dir, "bad_factory_plugin.py", '''
        from attdarts.language.catalog import Entry, register
        register(Entry("bad_gate", "attention", factory="no_such_module_here:bad_gate"))
    ''')
    geno = _write(plugin_dir, "g.geno", GENOTYPE.replace("ATTENTION", "bad_gate"))
    result = CliRunner().invoke(cli, ["--plugin", "bad_factory_plugin", "compile", str(geno),
                                      "--channels", "4", "--layers", "3"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("attention 'bad_gate' (from 'bad_factory_plugin'): cannot import its factory "
            "no_such_module_here:bad_gate (ModuleNotFoundError: No module named "
            "'no_such_module_here')") in result.stderr


def test_a_plugin_adds_a_search_method_used_like_a_built_in_one(plugin_dir, one_thread):
    """A search method from a plug-in: one catalog entry (credited to the plug-in) and one module
    with its `SearchMethod`; a space lists it, its settings are checked like built-in ones, and a
    supernet runs its hook. A plug-in that fails after registering one leaves no trace."""
    import torch

    from attdarts.language import methods
    from attdarts.networks.supernet import compile_supernet

    _write(plugin_dir, "sharp_plugin.py", '''
        from attdarts.language.catalog import Parameter
        from attdarts.language.methods import Method, register
        register(Method("sharp_softmax", "a test", "softmax of alpha * t",
                        "layers_of_sharp:SharpSoftmax",
                        settings={"t": Parameter(float, 2.0, minimum=0.0)}))
    ''')
    _write(plugin_dir, "layers_of_sharp.py", '''
        import torch
        from attdarts.networks.methods import SearchMethod

        class SharpSoftmax(SearchMethod):
            def normalise(self, kind, raw, cell, draw):
                return torch.softmax(raw * self.settings["t"], dim=-1)
    ''')
    (plugin,), warnings = _load("sharp_plugin")
    assert warnings == [] and methods.METHODS["sharp_softmax"].origin == "sharp_plugin"
    text = ("space s {\n    operations = [none, skip_connect, avg_pool_3x3]\n"
            "    nodes = 2\n    location = no_attention\n    methods = [METHOD]\n}\n")
    with pytest.raises(DslError, match="did you mean 'sharp_softmax'"):
        parse_text(text.replace("METHOD", "sharp_softmx"))
    with pytest.raises(DslError, match="'t' of sharp_softmax is -1"):
        parse_text(text.replace("METHOD", "sharp_softmax(t=-1)"))
    space = parse_text(text.replace("METHOD", "sharp_softmax(t=3)")).space()
    model = compile_supernet(space, channels=4, layers=2, num_classes=3, input_size=8)
    with torch.no_grad():
        model.arch.tensor("alpha", "normal").copy_(torch.tensor([[0.0, 1.0, 0.0]] * 5))
    weights = model.normalised_architecture()["normal"]["alpha"]
    assert torch.allclose(weights[0], torch.softmax(torch.tensor([0.0, 3.0, 0.0]), dim=-1))
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)

    _write(plugin_dir, "half_plugin.py", '''
        from attdarts.language.methods import Method, register
        register(Method("half_method", "a test", "never used", "nowhere:Half"))
        raise RuntimeError("broken after registering")
    ''')
    _, warnings = _load("half_plugin")
    assert len(warnings) == 1 and "half_plugin" in warnings[0]
    assert "half_method" not in methods.METHODS
