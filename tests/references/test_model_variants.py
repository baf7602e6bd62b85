"""Every released TiTok variant: exact parameter counts and output shapes (no weights allocated)."""

import jax
import jax.numpy as jnp
import pytest
from helpers import RNGS, abstract_params, count_params, model_for

# Official parameter counts (random init of the official PyTorch code, all tensors).
OFFICIAL_PARAM_COUNTS = {
    "titok_two_stage.py:l32,stage=2": 641_054_735,
    "titok_two_stage.py:b64,stage=2": 204_814_095,
    "titok_two_stage.py:s128,stage=2": 83_674_639,
    "titok_single_stage.py:bl64_vq": 390_016_148,
    "titok_single_stage.py:bl128_vq": 390_179_988,
    "titok_single_stage.py:sl256_vq": 330_260_884,
    "titok_single_stage.py:ll32_vae": 606_879_604,
    "titok_single_stage.py:bl64_vae": 389_418_100,
    "titok_single_stage.py:bl128_vae": 389_581_940,
}


@pytest.mark.parametrize("spec", sorted(OFFICIAL_PARAM_COUNTS))
def test_param_count_matches_official(spec):
    assert count_params(abstract_params(model_for(spec))) == OFFICIAL_PARAM_COUNTS[spec]


def test_stage2_adds_exactly_the_maskgit_decoder_and_codebook():
    from maskgit_reference import maskgit_vqgan_abstract_params

    reference = maskgit_vqgan_abstract_params()["params"]
    added = count_params(reference["decoder"]) + count_params(reference["quantizer"])
    stage1 = count_params(abstract_params(model_for("titok_two_stage.py:s128,stage=1")))
    stage2 = count_params(abstract_params(model_for("titok_two_stage.py:s128,stage=2")))
    assert stage2 - stage1 == added == 30_740_483


ALL_VARIANTS = [
    *[
        f"titok_two_stage.py:{v},stage={s}"
        for v in ("l32", "b64", "s128", "l64_512", "b128_512", "tiny")
        for s in (1, 2)
    ],
    *[
        f"titok_single_stage.py:{v}"
        for v in ("bl64_vq", "bl128_vq", "sl256_vq", "ll32_vae", "bl64_vae", "bl128_vae", "tiny_vq", "tiny_vae")
    ],
]


@pytest.mark.parametrize("spec", ALL_VARIANTS)
def test_encode_decode_shapes_and_dtypes(spec):
    model = model_for(spec)
    params = abstract_params(model)
    batch, size = 2, model.image_size
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    num_tokens, token_size = model.num_latent_tokens, model.token_size

    latents, info = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode, rngs=RNGS), params, images)
    assert (latents.shape, latents.dtype) == ((batch, num_tokens, token_size), jnp.float32)
    if model.quantize_mode == "vq":
        assert (info["indices"].shape, info["indices"].dtype) == ((batch, num_tokens), jnp.int32)
        assert info["quantizer_loss"].shape == ()
        tokens = jax.ShapeDtypeStruct((batch, num_tokens), jnp.int32)
    else:
        assert info["mean"].shape == info["logvar"].shape == (batch, num_tokens, token_size)
        assert info["kl"].shape == (batch,)
        tokens = latents

    decoded = jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), params, latents)
    from_tokens = jax.eval_shape(lambda p, t: model.apply(p, t, method=model.decode_tokens), params, tokens)
    if model.decodes_to_pixels:
        expected = (batch, size, size, 3)
    else:  # stage-1 two-stage: logits over the VQGAN's proxy codes on the decoder grid
        grid = size // model.decoder_patch_size
        expected = (batch, grid, grid, model.proxy_codebook_size)
    assert decoded.shape == from_tokens.shape == expected
    assert decoded.dtype == from_tokens.dtype == jnp.float32


def test_512px_variants_use_a_32x32_grid():
    for spec, tokens in (("titok_two_stage.py:l64_512", 64), ("titok_two_stage.py:b128_512", 128)):
        model = model_for(spec)
        params = abstract_params(model)
        assert params["params"]["encoder"]["positional_embedding"].shape[0] == 32 * 32 + 1
        assert params["params"]["latent_tokens"].shape[0] == tokens
