"""recipes.py states the defaults that SearchConfig and TrainConfig use (one home per default)."""

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
