"""recipes.py states the defaults that SearchConfig and TrainConfig use (one home per default)."""

import re
from pathlib import Path

from attdarts import recipes
from attdarts.runs.search import SearchConfig, recipe_config
from attdarts.runs.train import TrainConfig


def _settings(config, keys):
    return {key: getattr(config, key) for key in keys}


def test_search_recipes_are_the_configs_defaults():
    for name, row in recipes.SEARCH.items():
        config = recipe_config(name, space_file="space.geno")
        assert _settings(config, row) == row, name
    assert set(recipes.SEARCH["paper"]) == set(SearchConfig.model_fields) - {"space_file", "space"}


def test_train_recipes_are_the_configs_defaults():
    assert _settings(TrainConfig(), recipes.TRAIN["cifar"]) == recipes.TRAIN["cifar"]
    assert set(recipes.TRAIN["cifar"]) == set(TrainConfig.model_fields)
    imagenet = TrainConfig.recipe("imagenet")
    assert _settings(imagenet, recipes.TRAIN["imagenet"]) == recipes.TRAIN["imagenet"]


def _readme_recipe_rows() -> dict[str, str]:
    """README's recipe table: recipe name -> its "settings that differ" cell."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("Every recipe of `attdarts search --recipe`")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            rows[cells[0].strip("`")] = cells[2]
    return rows


def test_readme_lists_every_search_recipe_with_its_settings():
    rows = _readme_recipe_rows()
    assert list(rows) == list(recipes.SEARCH)
    paper = recipes.SEARCH["paper"]
    for name, cell in rows.items():
        shown = dict(re.findall(r"`--([a-z-]+) ([^`]+)`", cell))
        differing = {key: value for key, value in recipes.SEARCH[name].items()
                     if key != "recipe" and value != paper[key]}
        assert {option.replace("-", "_") for option in shown} == set(differing), name
        for option, value in shown.items():
            expected = differing[option.replace("-", "_")]
            if isinstance(expected, tuple):  # betas, written as the option takes them
                assert value == ",".join(map(str, expected)), (name, option)
                continue
            assert str(value) == str(expected) or float(value) == expected, (name, option)


def test_a_refused_setting_that_the_recipe_chose_says_so():
    """`--recipe drnas --epochs 2`: the 10 warm-up epochs come from the recipe, not the user."""
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match=r"arch_start_epoch \(10, set by --recipe "
                                                       r"drnas\) must be below epochs \(2\)"):
        recipe_config("drnas", space_file="s.geno", epochs=2)
    with pytest.raises(pydantic.ValidationError, match=r"lr_min \(0.001, set by --recipe "
                                                       r"fair-darts\) must not exceed lr"):
        recipe_config("fair-darts", space_file="s.geno", lr=0.0005)
    with pytest.raises(pydantic.ValidationError, match=r"arch_start_epoch \(3\) must be below"):
        recipe_config("drnas", space_file="s.geno", epochs=2, arch_start_epoch=3)
