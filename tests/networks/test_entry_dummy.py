"""Adding an attention module is one catalog entry: a dummy one goes through every stage.

A fixture registers `dummy_gate` (a factory in this module, named by its dotted path) and
restores the catalog afterwards. Check, compile, a one-step search, render and the authors'
format round trip then all see it without any other table being edited.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from attdarts import api
from attdarts.language import catalog
from attdarts.language.transform import parse_text
from attdarts.networks.network import compile_network
from attdarts.networks.registry import ATTENTIONS
from attdarts.runs import data
from attdarts.runs.search import SearchConfig, run_search

NAME = "dummy_gate"
GENOTYPE = f"""genotype g {{
    normal {{
        n0 = sep_conv_3x3(c_k2) >> {NAME} + skip_connect(c_k1)
        n1 = max_pool_3x3(n0) >> {NAME}(scale=2) + skip_connect(c_k1)
        c_k = concat(n0, n1)
    }}
    reduce {{
        n0 = max_pool_3x3(c_k2) >> {NAME} + skip_connect(c_k1)
        n1 = skip_connect(n0) + max_pool_3x3(c_k1)
        c_k = concat(n0, n1)
    }}
}}
"""
SPACE = f"""space s {{
    operations = [none, skip_connect, max_pool_3x3]
    attentions = [identity, {NAME}]
    nodes = 2
    mixing = product
}}
"""


class DummyGate(nn.Module):
    """A masking attention: x * sigmoid(scale * w), one learnt weight per channel."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = scale

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scale * self.weight).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


def dummy_gate(channels: int, *, spatial: int, scale: int = 1) -> nn.Module:
    return DummyGate(channels, scale)


@pytest.fixture
def dummy_entry():
    saved = dict(catalog.ATTENTIONS)
    entry = catalog.register(catalog.Entry(
        NAME, "attention", {"scale": catalog.Parameter(int, 1, minimum=1)},
        factory=f"{__name__}:dummy_gate", label="Dummy", authors_name="Dummy"))
    assert sys.modules[__name__].dummy_gate is dummy_gate  # the path resolves to this module
    yield entry
    catalog.ATTENTIONS.clear()
    catalog.ATTENTIONS.update(saved)


def test_check_and_compile(dummy_entry, tmp_path):
    path = tmp_path / "g.geno"
    path.write_text(GENOTYPE + "\n" + SPACE)
    assert api.check_file(path) == []
    assert NAME in ATTENTIONS
    model = compile_network(parse_text(GENOTYPE).genotype(), channels=4, layers=3,
                            input_size=8, auxiliary=False)
    gates = [m for m in model.modules() if isinstance(m, DummyGate)]
    assert len(gates) == 2 + 1 + 1 and {g.scale for g in gates} == {1, 2}  # normal, reduce x2
    logits = model(torch.randn(2, 3, 8, 8))
    logits.sum().backward()
    assert all(gate.weight.grad is not None for gate in gates)


def test_one_step_search(dummy_entry, tmp_path):
    space_file = tmp_path / "s.geno"
    space_file.write_text(SPACE)
    config = SearchConfig(space_file=str(space_file), dataset="synthetic", epochs=1,
                          batch_size=4, channels=4, layers=3, max_steps_per_epoch=1,
                          deterministic=True)
    images = data.synthetic_dataset(train=True, size=16, resolution=8)
    result = run_search(config, tmp_path / "run", device="cpu", dataset=images)
    assert result.genotype.normal.nodes  # a genotype was derived over the dummy's columns


def test_render_and_authors_format_round_trip(dummy_entry):
    from attdarts.tools import interop, render

    genotype = parse_text(GENOTYPE).genotype()
    assert "Dummy" in render.genotype_dot(genotype)
    plain = parse_text(GENOTYPE.replace("(scale=2)", "")).genotype()
    text = interop.export_genotypes([plain], "att-darts-py")
    assert "'Dummy'" in text
    imported = interop.import_text(text, format="python").genotypes[0]
    assert (imported.normal, imported.reduce) == (plain.normal, plain.reduce)
