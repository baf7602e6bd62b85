"""Counts and periods are checked before anything compiles: 0 or negative is named, not a ZeroDivisionError."""

import pytest
from helpers import GENERATOR, SINGLE_STAGE

from titok_jax import configs, recipes


@pytest.mark.parametrize(
    "spec, key",
    [
        (f"{SINGLE_STAGE}:tiny_vq", "log_every"),
        (f"{SINGLE_STAGE}:tiny_vq", "checkpoint_every"),
        (f"{SINGLE_STAGE}:tiny_vq", "grad_accum_steps"),
        (f"{SINGLE_STAGE}:tiny_vq", "keep_checkpoints"),
        (f"{SINGLE_STAGE}:tiny_vq", "image_every"),
        (f"{SINGLE_STAGE}:tiny_vq", "total_steps"),
        (f"{GENERATOR}:tiny", "sample_every"),
        (f"{GENERATOR}:tiny", "batch_size"),
    ],
)
@pytest.mark.parametrize("value", [0, -1])
def test_counts_and_periods_must_be_positive(spec, key, value):
    config = configs.load_config(spec)
    config[key] = value
    with pytest.raises(ValueError, match=rf"^config\.{key} must be a positive integer, got {value}"):
        recipes.validate(config)
