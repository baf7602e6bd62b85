"""Trained runs named by their experiment config: the config validated by its recipe, then read params-only."""

from __future__ import annotations

import ml_collections

from titok_jax import recipes
from titok_jax.inference.generator import Generator
from titok_jax.inference.tokenizer import Tokenizer


def checked(config: ml_collections.ConfigDict, artifact: str, flag: str = "--config") -> ml_collections.ConfigDict:
    """Validates `config` and refuses one whose recipe trains something other than `artifact`."""
    module = recipes.validate(config)
    if module.ARTIFACT != artifact:
        raise ValueError(f"{flag} must be a {artifact} config; recipe {config.recipe!r} trains a {module.ARTIFACT}.")
    return config


def load_generator(config: ml_collections.ConfigDict, workdir: str) -> Generator:
    """The generator of a training workdir (EMA params) with the tokenizer its config names."""
    config = config.copy_and_resolve_references()
    config.tokens_dir = ""  # sampling reads no token shards
    return Generator.load(workdir, checked(config, recipes.GENERATOR))


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> Tokenizer:
    """The tokenizer of a training workdir (EMA params)."""
    return Tokenizer.load(workdir, checked(config, recipes.TOKENIZER))
