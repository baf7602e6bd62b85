"""FSQ, LFQ and BSQ tokenizers end to end: they train (entropy terms logged), export, reload bit-identically,
pretokenize, and a generator whose vocabulary does not match their codebook is refused."""

import numpy as np
import pytest
from train_helpers import build_recipe, tiny_config, tiny_generator_config

from titok_jax import Tokenizer, recipes
from titok_jax.convert import titok as convert_titok
from titok_jax.data import synthetic
from titok_jax.inference import pretokenize
from titok_jax.tasks.export import export as export_tokenizer

# mode -> (token_size, codebook_size) of the tiny variant (FSQ 2**8 preset: levels 8 x 6 x 5 = 240 codes).
TINY = {"fsq": (3, 240), "lfq": (8, 256), "bsq": (8, 256)}


@pytest.fixture(scope="module")
def images():
    shapes = synthetic.SyntheticShapes(num_examples=6, image_size=32, seed=7)
    return np.stack([shapes[i]["image"] for i in range(6)])


@pytest.mark.parametrize("mode", sorted(TINY))
def test_a_lookup_free_tokenizer_exports_reloads_pretokenizes_and_checks_generators(mode, images, tmp_path):
    config = tiny_config(f"single_stage:tiny_{mode}")
    config.data.num_examples = 64
    token_size, codebook_size = TINY[mode]
    assert (config.model.token_size, config.model.codebook_size) == (token_size, codebook_size)

    # Two real training steps: the quantizer's terms reach the metrics (LFQ / BSQ entropy, annealed weight).
    workdir = str(tmp_path / "run")
    metrics = recipes.train(tiny_config(f"single_stage:tiny_{mode}", total_steps=2, checkpoint_every=2), workdir)
    assert np.isfinite(metrics["loss"]) and 0 < metrics["codebook_usage"] <= 1
    if mode != "fsq":
        assert metrics["per_sample_entropy"] >= 0 and metrics["codebook_entropy"] > 0
        assert np.isfinite(metrics["entropy_loss"])

    tokenizer = Tokenizer.load(workdir, config)
    tokens = tokenizer.encode(images)
    assert tokens.shape == (6, 16) and tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < codebook_size
    export_tokenizer(config, workdir, str(tmp_path / "bundle"))
    loaded = Tokenizer.load(str(tmp_path / "bundle"))
    assert loaded.model == tokenizer.model and loaded.codebook_size == codebook_size
    np.testing.assert_array_equal(loaded.encode(images), tokens)
    np.testing.assert_array_equal(loaded.decode(tokens), tokenizer.decode(tokens))
    with pytest.raises(ValueError, match="official TiTok layout has VQ and VAE tokenizers only"):
        convert_titok.hub_config_from_fields(tokenizer.model)

    tokens_dir = str(tmp_path / "tokens")
    metadata = pretokenize.pretokenize(config, workdir, tokens_dir, shard_size=64, batch_size=16)
    assert metadata["codebook_size"] == codebook_size and metadata["num_tokens"] == 16
    generator = tiny_generator_config(workdir, tokens_dir, arg=f"tiny,tokenizer=tiny_{mode}")
    assert generator.model.codebook_size == codebook_size  # the vocabulary follows the tokenizer's quantizer
    recipes.validate(generator)
    build_recipe(generator)
    generator.model.codebook_size = 256 if codebook_size != 256 else 240
    with pytest.raises(ValueError, match=r"Generator/tokenizer mismatch.*codebook_size"):
        recipes.validate(generator)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"quantize_mode": "fsq", "fsq_levels": (8, 6, 5), "token_size": 8, "codebook_size": 240},
            "implies token_size=3",
        ),
        ({"quantize_mode": "lfq", "token_size": 8, "codebook_size": 240}, "implies token_size=8 and codebook_size=256"),
        ({"quantize_mode": "lfq", "token_size": 18, "codebook_size": 2**18}, "token_size <= 16"),
        ({"quantize_mode": "bsq", "token_size": 8, "codebook_size": 256, "bsq_group_size": 3}, "must divide"),
    ],
)
def test_quantizer_fields_that_disagree_are_named(fields, message):
    config = tiny_config()
    config.model.update(fields)
    with pytest.raises(ValueError, match=message):
        recipes.validate(config)


def test_the_two_stage_recipe_refuses_lookup_free_quantizers():
    config = tiny_config("two_stage:tiny,stage=1")
    config.model.update(quantize_mode="fsq", fsq_levels=(8, 6, 5), token_size=3, codebook_size=240)
    with pytest.raises(ValueError, match="trains in the single_stage recipe"):
        recipes.validate(config)
