"""The recipe registry: every shipped config names a registered recipe; the old generator name still loads."""

import pytest
from absl import logging
from helpers import GENERATOR, SINGLE_STAGE, TWO_STAGE

from titok_jax import configs, recipes
from titok_jax.recipes import maskgit, tokenizer


@pytest.mark.parametrize(
    "spec, module",
    [(f"{TWO_STAGE}:tiny,stage=1", tokenizer), (f"{SINGLE_STAGE}:tiny_vae", tokenizer), (f"{GENERATOR}:l32", maskgit)],
)
def test_lookup_finds_the_owning_module(spec, module):
    config = configs.load_config(spec)
    assert recipes.lookup(config) is module
    assert module.ARTIFACT == (recipes.GENERATOR if module is maskgit else recipes.TOKENIZER)


def test_the_old_generator_name_loads_with_a_deprecation_message(monkeypatch):
    config = configs.load_config(f"{GENERATOR}:l32")
    assert config.recipe == "maskgit"
    config.recipe = "generator"
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    assert recipes.lookup(config) is maskgit
    assert warnings == ["config.recipe='generator' is deprecated; use 'maskgit'."]


def test_unknown_or_missing_recipes_name_the_valid_ones():
    config = configs.load_config(f"{SINGLE_STAGE}:tiny_vq")
    config.recipe = "two_stage_3"
    with pytest.raises(ValueError, match=r"Unknown recipe 'two_stage_3'; valid recipes: two_stage_1, .*maskgit"):
        recipes.validate(config)
    del config["recipe"]
    with pytest.raises(ValueError, match="missing the top-level field 'recipe'"):
        recipes.validate(config)
