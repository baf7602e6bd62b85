"""TiTok numerics: the ViT block against a numpy reference, the layout quirks, real tiny forward passes."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RNGS, model_for
from scipy.special import erf

from titok_jax.models.layers import ResidualAttentionBlock, sincos_2d
from titok_jax.models.titok import TiTokDecoder, TiTokEncoder


def _randomise(tree, seed):
    """Replace every leaf (incl. LN scales / zero biases) by random values so no term is trivial."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten(
        [0.3 * jax.random.normal(k, x.shape) + (x if x.ndim == 1 else 0) for k, x in zip(keys, leaves, strict=True)]
    )


def _np_layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_block(x, p, num_heads):
    """open_clip ResidualAttentionBlock with torch-layout weights (in_proj (3W, W), linears (out, in))."""
    width = x.shape[-1]
    head_dim = width // num_heads
    in_proj_weight = np.asarray(p["attn"]["qkv_kernel"]).reshape(width, 3 * width).T
    in_proj_bias = np.asarray(p["attn"]["qkv_bias"]).reshape(3 * width)
    out_proj_weight = np.asarray(p["attn"]["out_kernel"]).reshape(width, width).T

    h = _np_layer_norm(x, p["ln_1"]["scale"], p["ln_1"]["bias"])
    qkv = h @ in_proj_weight.T + in_proj_bias
    q, k, v = np.split(qkv, 3, axis=-1)
    split = lambda t: t.reshape(*t.shape[:2], num_heads, head_dim).transpose(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(head_dim)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attn = (weights @ split(v)).transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + attn @ out_proj_weight.T + np.asarray(p["attn"]["out_bias"])

    h = _np_layer_norm(x, p["ln_2"]["scale"], p["ln_2"]["bias"])
    h = h @ np.asarray(p["mlp"]["fc"]["kernel"]) + np.asarray(p["mlp"]["fc"]["bias"])
    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # exact GELU
    return x + h @ np.asarray(p["mlp"]["proj"]["kernel"]) + np.asarray(p["mlp"]["proj"]["bias"])


def test_attention_block_matches_numpy_reference():
    block = ResidualAttentionBlock(num_heads=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
    params = _randomise(nn.meta.unbox(block.init(jax.random.PRNGKey(1), x)), seed=2)
    expected = _np_block(np.asarray(x, np.float64), jax.tree.map(np.asarray, params["params"]), num_heads=4)
    np.testing.assert_allclose(block.apply(params, x), expected, atol=1e-4, rtol=1e-4)


def test_legacy_reshape_feeds_conv_out_the_scrambled_layout():
    """Released two-stage weights expect (B, K, W) reshaped, not transposed, to (B, W, K)."""
    batch, width, tokens = 2, 32, 6
    kwargs = dict(
        image_size=16, patch_size=8, width=width, depth=1, num_heads=2, num_latent_tokens=tokens, output_channels=5
    )
    images = jax.random.uniform(jax.random.PRNGKey(0), (batch, 16, 16, 3))
    latent_tokens = jax.random.normal(jax.random.PRNGKey(1), (tokens, width))
    for legacy in (False, True):
        encoder = TiTokEncoder(**kwargs, legacy_reshape=legacy)
        params = nn.meta.unbox(encoder.init(jax.random.PRNGKey(2), images, latent_tokens))
        out, state = encoder.apply(params, images, latent_tokens, capture_intermediates=True)
        ln_post = np.asarray(state["intermediates"]["ln_post"]["__call__"][0])
        kernel, bias = (np.asarray(params["params"]["conv_out"][k]) for k in ("kernel", "bias"))
        features = ln_post.reshape(batch, width, tokens).transpose(0, 2, 1) if legacy else ln_post
        np.testing.assert_allclose(out, features @ kernel + bias, atol=1e-5)
        chex.assert_shape(out, (batch, tokens, 5))


def test_pixel_head_reads_channels_as_p1_p2_c():
    """`b (p1 p2 c) h w -> b c (h p1) (w p2)`: checked with an identity 3x3 conv_out."""
    decoder = TiTokDecoder(image_size=16, patch_size=4, width=32, depth=1, num_heads=2, num_latent_tokens=3)
    latents = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
    params = nn.meta.unbox(decoder.init(jax.random.PRNGKey(1), latents))
    identity = np.zeros((3, 3, 3, 3), np.float32)
    identity[1, 1] = np.eye(3)
    params["params"]["conv_out"] = {"kernel": jnp.asarray(identity), "bias": jnp.zeros(3)}
    out, state = decoder.apply(params, latents, capture_intermediates=True)
    patches = np.asarray(state["intermediates"]["ffn_pixels"]["__call__"][0])  # (B, 4, 4, 4*4*3)
    p = 4
    for h, w, p1, p2, c in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 2), (3, 3, 2, 3, 1), (2, 0, 1, 2, 0)]:
        np.testing.assert_allclose(
            out[:, h * p + p1, w * p + p2, c], patches[:, h, w, (p1 * p + p2) * 3 + c], atol=1e-6
        )


TINY = [
    "titok_two_stage.py:tiny,stage=1",
    "titok_two_stage.py:tiny,stage=2",
    "titok_single_stage.py:tiny_vq",
    "titok_single_stage.py:tiny_vae",
]


@pytest.mark.parametrize("spec", TINY)
def test_tiny_forward_pass(spec):
    model = model_for(spec)
    images = jax.random.uniform(jax.random.PRNGKey(3), (4, *model.image_shape))
    params = nn.meta.unbox(jax.jit(model.init)(RNGS, images))
    chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda x: x.astype(jnp.float32), params))

    latents, info = jax.jit(lambda p, x: model.apply(p, x, sample_posterior=False, method=model.encode))(params, images)
    decoded = jax.jit(lambda p, z: model.apply(p, z, method=model.decode))(params, latents)
    chex.assert_tree_all_finite((latents, info, decoded))
    if model.quantize_mode == "vq":
        tokens = info["indices"]
        assert len(np.unique(tokens)) > 1
    else:
        tokens = info["mean"]
        np.testing.assert_array_equal(latents, info["mean"])
    from_tokens = jax.jit(lambda p, t: model.apply(p, t, method=model.decode_tokens))(params, tokens)
    # Separately jitted programs of O(1) pixels: XLA may reassociate sums differently (1.05e-5 seen on one
    # CPU for the stage-2 decoder), so the tolerance leaves 10x headroom over that.
    np.testing.assert_allclose(from_tokens, decoded, atol=1e-4)

    if model.with_pixel_decoder:
        # Stage 2 = softmax(proxy logits) @ pixel codebook -> VQGAN decoder.
        def by_hand(m, z):
            logits = m.decoder(z)
            return m.pixel_decoder(jax.nn.softmax(logits, -1) @ m.pixel_quantize.codebook)

        np.testing.assert_allclose(model.apply(params, latents, method=by_hand), decoded, atol=1e-4)


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32():
    model = model_for("titok_single_stage.py:tiny_vq")
    bf16 = model.clone(dtype=jnp.bfloat16)
    images = jax.random.uniform(jax.random.PRNGKey(3), (2, *model.image_shape))
    params = nn.meta.unbox(model.init(RNGS, images))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, nn.meta.unbox(bf16.init(RNGS, images)))
    latents32, _ = model.apply(params, images, method=model.encode)
    latents16, _ = bf16.apply(params, images, method=bf16.encode)
    assert latents16.dtype == jnp.float32  # the quantizer runs in fp32
    np.testing.assert_allclose(latents16, latents32, atol=0.05)
    decoded = bf16.apply(params, latents32, method=bf16.decode)
    assert decoded.dtype == jnp.float32
    np.testing.assert_allclose(decoded, model.apply(params, latents32, method=model.decode), atol=0.05)


def test_remat_keeps_params_outputs_and_gradients():
    model = model_for("titok_single_stage.py:tiny_vq")
    remat = model.clone(remat_policy="full")  # "dots" shares the nn.remat path, with a different policy
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, *model.image_shape))
    params = model.init(RNGS, images)
    chex.assert_trees_all_equal_shapes(params, remat.init(RNGS, images))  # same tree: checkpoints stay valid

    def loss(m, p):
        return jnp.mean(jnp.square(m.apply(p, images)[0] - images))

    chex.assert_trees_all_close(
        jax.grad(functools.partial(loss, remat))(params), jax.grad(functools.partial(loss, model))(params), atol=1e-6
    )
    with pytest.raises(ValueError, match="remat_policy='some' is not one of"):
        model.clone(remat_policy="some").init(RNGS, images)


def test_small_model_inits_keep_the_official_layout():
    """positional_init='sincos' / pixel_conv_init='identity' change values, not the tree; official stays random."""
    tiny = model_for("titok_single_stage.py:tiny_vq")
    assert (tiny.positional_init, tiny.pixel_conv_init) == ("sincos", "identity")
    official = tiny.clone(positional_init="normal", pixel_conv_init="truncated_normal")
    images = jnp.zeros((1, *tiny.image_shape))
    params, official_params = (nn.meta.unbox(m.init(RNGS, images))["params"] for m in (tiny, official))
    chex.assert_trees_all_equal_shapes(params, official_params)

    kernel = np.asarray(params["decoder"]["conv_out"]["kernel"])  # (3, 3, in, out)
    np.testing.assert_array_equal(kernel[1, 1], np.eye(3))
    assert not np.any(np.delete(kernel.reshape(9, 3, 3), 4, axis=0))
    assert np.abs(np.asarray(official_params["decoder"]["conv_out"]["kernel"])[1, 1] - np.eye(3)).max() > 0.5

    grid, width = tiny.image_size // tiny.encoder_patch_size, tiny.encoder_width
    codes = sincos_2d(grid, width)
    # Row r is patch (r // grid, r % grid): channel 0 = sin(y), width / 4 = cos(y), width / 2 = sin(x).
    np.testing.assert_allclose(codes[grid + 3, [0, width // 4, width // 2]], [np.sin(1), np.cos(1), np.sin(3)], 1e-6)
    for part in ("encoder", "decoder"):
        table = np.asarray(params[part]["positional_embedding"])
        np.testing.assert_allclose(table[1:], 0.5 * codes, atol=1e-7)
        # The class row keeps the official width**-0.5 * randn draw.
        np.testing.assert_array_equal(table[0], np.asarray(official_params[part]["positional_embedding"])[0])
