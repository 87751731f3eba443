"""Cost tables (`attdarts.networks.costs`): the sum of a genotype's entries is what `compile`
measures, exactly, for random genotypes of every location and for the zoo; what the table
refuses; the JSON file; latency entries."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from attdarts.language import ir
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.budget_derive import random_genotype
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.costs import (
    COUNTS, CostError, LatencySettings, read_cost_table, write_cost_table,
)
from attdarts.networks.measure import measure

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "genotypes" / "spaces"


def space_of(name: str) -> ir.Space:
    return parse_file(SPACES / f"{name}.geno").space()


def measured(genotype: ir.Genotype, dataset: str, channels: int, layers: int) -> dict:
    summary, _ = measure(genotype, dataset=dataset, channels=channels, layers=layers,
                         auxiliary=True)
    return {"multiply_adds": summary["multiply_adds"], "parameters": summary["parameters"],
            "parameters_with_auxiliary": summary["parameters_with_auxiliary"]}


def predicted(table, genotype) -> dict:
    prices = table.price(genotype)
    return {key: prices[key] for key in (*COUNTS, "parameters_with_auxiliary")}


def test_twenty_random_genotypes_cost_what_compile_measures(one_thread):
    """Issue 21's additivity check at tiny sizes: equal, not close."""
    space = space_of("att_darts")
    table = build_cost_table(space, channels=4, layers=5)
    generator = random.Random(21)
    for index in range(20):
        genotype = random_genotype(space, generator, name=f"random{index}")
        assert predicted(table, genotype) == measured(genotype, "cifar10", 4, 5), genotype


@pytest.mark.parametrize("name", ["darts", "att_darts_end", "att_darts_every_and_end",
                                  "att_darts_mixed", "att_darts_double_mixed", "att_darts_p"])
def test_every_location_is_additive(name, one_thread):
    space = space_of(name)
    table = build_cost_table(space, channels=4, layers=3)
    generator = random.Random(name)
    for index in range(3):
        genotype = random_genotype(space, generator)
        assert predicted(table, genotype) == measured(genotype, "cifar10", 4, 3), genotype


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
def test_other_skeletons_are_additive(dataset, one_thread):
    space = space_of("att_darts")
    table = build_cost_table(space, dataset=dataset, channels=4, layers=4)
    genotype = random_genotype(space, random.Random(dataset))
    assert predicted(table, genotype) == measured(genotype, dataset, 4, 4)


def test_mixed_locations_price_skip_connect_even_when_not_listed(one_thread):
    space = parse_text("""space mixed {
        operations = [none, sep_conv_3x3]
        attentions = [identity, se]
        nodes = 2
        location = mixed_with_operation
    }""").space()
    table = build_cost_table(space, channels=4, layers=3)
    assert [call.name for call in table.operations] == ["none", "sep_conv_3x3", "skip_connect"]
    genotype = random_genotype(space, random.Random(3))
    assert predicted(table, genotype) == measured(genotype, "cifar10", 4, 3)


def test_identity_costs_nothing_and_a_missing_attention_neither(one_thread):
    table = build_cost_table(space_of("att_darts"), channels=4, layers=3)
    identity = [call.name for call in table.attentions].index("identity")
    for cell in table.cells:
        for edge in cell.edges:
            assert all(edge.attentions[m][identity] == 0 for m in COUNTS)


def test_price_is_the_fixed_part_plus_the_per_type_sums(one_thread):
    """`kind_costs` (what the budget and derivation use) adds up to `price`."""
    space = space_of("att_darts_every_and_end")
    table = build_cost_table(space, channels=4, layers=5)
    genotype = random_genotype(space, random.Random(5))
    starts = [0, 2, 5, 9]
    for measure_name in COUNTS:
        kinds = table.kind_costs(measure_name)
        total = table.fixed[measure_name]
        for kind in ir.CELL_KINDS:
            cell = genotype.cell(kind)
            costs = kinds[kind]
            for position, node in enumerate(cell.nodes):
                for edge in node.edges:
                    index = starts[position] + cell.index_of(edge.input)
                    total += costs.operations[index][table.operations.index(edge.operation)]
                    if edge.attention is not None:
                        total += costs.attentions[index][table.attentions.index(edge.attention)]
            if cell.output.attention is not None:
                total += costs.output[table.attentions.index(cell.output.attention)]
        assert total == table.price(genotype)[measure_name]


def test_the_table_refuses_what_it_cannot_price(one_thread):
    table = build_cost_table(space_of("darts"), channels=4, layers=3)
    fewer_outputs = parse_text("""genotype partial {
        normal {
            n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1)
            n1 = sep_conv_3x3(c_k2) + skip_connect(n0)
            n2 = sep_conv_3x3(c_k1) + skip_connect(c_k2)
            n3 = skip_connect(c_k2) + sep_conv_7x7(n0) >> se
            c_k = concat(n2, n3)
        }
        reduce {
            n0 = max_pool_3x3(c_k2) + max_pool_3x3(c_k1)
            n1 = max_pool_3x3(c_k2) + max_pool_3x3(c_k1)
            c_k = concat(n0, n1) >> cbam
        }
    }""").genotype()
    problems = table.problems(fewer_outputs)
    assert any("concatenates n2, n3 only" in p for p in problems)
    assert any("operation 'sep_conv_7x7' (normal n3<-n0)" in p for p in problems)
    assert any("attention 'se' (normal n3<-n0)" in p for p in problems)
    assert any("the reduce cell has 2 nodes" in p for p in problems)
    with pytest.raises(CostError, match="cannot price genotype 'partial'") as caught:
        table.price(fewer_outputs)
    assert "\n" not in str(caught.value)
    output_attention = parse_file(ROOT / "genotypes" / "darts_v2.geno").genotype()
    reduce = output_attention.reduce.model_copy(update={"output": ir.Output(
        nodes=output_attention.reduce.output.nodes, attention=ir.Call(name="se"))})
    problems = table.problems(output_attention.model_copy(update={"reduce": reduce}))
    assert problems == ["the reduce cell has an output attention; location 'no_attention' of "
                        "space 'darts' has none"]


def test_the_file_round_trips_and_names_what_it_prices(tmp_path, one_thread):
    space = space_of("att_darts_every_and_end")
    table = build_cost_table(space, channels=4, layers=3)
    path = tmp_path / "costs.json"
    write_cost_table(table, path)
    data = json.loads(path.read_text())
    assert (data["space"], data["dataset"], data["channels"], data["layers"]) == \
        ("att_darts_every_and_end", "cifar10", 4, 3)
    assert data["torch"] and data["created"].endswith("Z") and data["latency"] is None
    assert set(data["fixed"]["parts"]) == {"stem", "preprocessing", "classifier"}
    assert data["cells"][1]["edges"][0]["stride"] == 2 and "output" in data["cells"][1]
    again = read_cost_table(path)
    genotype = random_genotype(space, random.Random(0))
    assert again.price(genotype) == table.price(genotype)
    assert again.matches(space) is None
    assert "C=4, L=3, not cifar10, C=36, L=3" in again.matches(space, channels=36)
    assert "differ" in again.matches(space_of("darts"))


@pytest.mark.parametrize("text, message", [
    ("{", "not a JSON cost table"),
    ('{"format": "other"}', "not an attdarts cost table"),
    ('{"format": "attdarts-cost-table", "version": 7}', "version 7"),
    ('{"format": "attdarts-cost-table", "version": 1, "space_text": "space x {"}',
     "the table's space does not parse"),
    ('{"format": "attdarts-cost-table", "version": 1}', "damaged cost table"),
])
def test_a_bad_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "costs.json"
    path.write_text(text)
    with pytest.raises(CostError, match=message) as caught:
        read_cost_table(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_latency_entries_and_the_addition_of_an_extra_edge(tmp_path, one_thread):
    space = space_of("darts")
    settings = LatencySettings(batch_size=2, warmup=0, repeats=3)
    table = build_cost_table(space, channels=4, layers=3, latency=settings)
    assert table.measures == (*COUNTS, "latency_ms")
    edge = table.cells[0].edges[0]
    assert all(value > 0 for value in edge.operations["latency_ms"][1:])  # all but none
    assert all(value >= 0 for value in edge.operations["latency_spread_ms"])
    assert table.fixed["latency_ms"] > 0 and table.cells[0].addition_ms > 0
    genotype = parse_file(ROOT / "genotypes" / "darts_v2.geno").genotype()
    base = table.price(genotype)["latency_ms"]
    node = genotype.normal.nodes[0]
    extra = node.model_copy(update={"edges": (*node.edges, ir.Edge(
        operation=ir.Call(name="skip_connect"), input="c_k1"))})
    normal = genotype.normal.model_copy(update={"nodes": (extra, *genotype.normal.nodes[1:])})
    more = table.price(genotype.model_copy(update={"normal": normal}))["latency_ms"]
    skip = [call.name for call in table.operations].index("skip_connect")
    added = sum(cell.edges[1].operations["latency_ms"][skip] + cell.addition_ms
                for cell in table.cells if cell.kind == "normal")
    assert more == pytest.approx(base + added)  # the edge and one more addition per cell
    write_cost_table(table, tmp_path / "costs.json")
    again = read_cost_table(tmp_path / "costs.json")
    assert again.latency == settings and again.price(genotype) == table.price(genotype)


def test_full_size_parameters_of_the_zoo(one_thread):
    """C=36, 20 cells: the table's parameter counts are `compile`'s (3,231,343 for att_darts,
    3,349,342 for DARTS V2) for every zoo genotype the two spaces price."""
    from attdarts.networks.network import compile_network
    from attdarts.networks.measure import count_parameters

    priced = {}
    for space_name in ("att_darts", "darts"):
        table = build_cost_table(space_of(space_name))
        for path in sorted((ROOT / "genotypes").glob("*.geno")):
            genotype = parse_file(path).genotype()
            if table.problems(genotype):
                continue
            model = compile_network(genotype, channels=36, layers=20, auxiliary=True)
            prices = table.price(genotype)
            assert prices["parameters"] == count_parameters(model, auxiliary=False), path.name
            assert prices["parameters_with_auxiliary"] == count_parameters(model, auxiliary=True)
            priced.setdefault(space_name, []).append(genotype.name)
    assert priced["att_darts"] == ["att_darts", "darts_v1", "darts_v2", "p_darts", "pc_darts"]
    assert priced["darts"] == ["darts_v1", "darts_v2", "p_darts", "pc_darts"]


@pytest.mark.slow  # a full-size forward per genotype: seconds each, a minute on a loaded CPU
def test_full_size_counts_of_the_zoo_equal_compile(one_thread):
    for space_name in ("att_darts", "darts"):
        table = build_cost_table(space_of(space_name))
        for path in sorted((ROOT / "genotypes").glob("*.geno")):
            genotype = parse_file(path).genotype()
            if not table.problems(genotype):
                assert predicted(table, genotype) == measured(genotype, "cifar10", 36, 20), path


@pytest.mark.slow  # twenty full-size forwards
def test_twenty_random_genotypes_at_full_size(one_thread):
    space = space_of("att_darts")
    table = build_cost_table(space)
    generator = random.Random(2021)
    for _ in range(20):
        genotype = random_genotype(space, generator)
        assert predicted(table, genotype) == measured(genotype, "cifar10", 36, 20)
