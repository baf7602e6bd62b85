"""Optimiser pieces: decay mask, schedule, EMA, frozen params, gradient accumulation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import abstract_params, model_for

from titok_jax import losses, optim
from titok_jax.recipes import defaults
from titok_jax.recipes.tokenizer import PixelRecipe
from titok_jax.train.accumulate import accumulate
from titok_jax.trees import path_name

# The recipes' optimizer block with a short warmup.
OPT = defaults.base_config().optimizer
OPT.warmup_steps = 10


def _flat(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


def test_weight_decay_follows_the_official_exclusions():
    params = abstract_params(model_for("titok_two_stage.py:tiny,stage=2"))
    mask = _flat(optim.weight_decay_mask(params))
    decayed = {k for k, v in mask.items() if v}
    # Matrices of linears / convs decay ...
    for name in (
        "params/encoder/transformer/block_0/attn/qkv_kernel",
        "params/encoder/transformer/block_0/attn/out_kernel",
        "params/encoder/transformer/block_1/mlp/fc/kernel",
        "params/encoder/conv_out/kernel",
        "params/decoder/ffn_logits/kernel",
        "params/pixel_decoder/Conv_0/kernel",
    ):
        assert name in decayed, name
    # ... embeddings, codebooks, norms, biases and 1-D params do not.
    for name in (
        "params/latent_tokens",
        "params/encoder/patch_embed/kernel",  # official: 'embed' in the name
        "params/decoder/decoder_embed/kernel",
        "params/decoder/mask_token",
        "params/encoder/positional_embedding",
        "params/quantize/codebook",
        "params/pixel_quantize/codebook",
        "params/encoder/ln_pre/scale",
        "params/encoder/transformer/block_0/attn/qkv_bias",
        "params/pixel_decoder/GroupNorm_0/scale",
    ):
        assert not mask[name], name


def test_schedule_warmup_then_cosine_to_end():
    schedule = optim.learning_rate_schedule(OPT, total_steps=110)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 5e-5, 1e-4], rtol=1e-6)
    # halfway through the cosine: end + (peak - end) / 2
    np.testing.assert_allclose(schedule(60), 1e-5 + 0.5 * 9e-5, rtol=1e-5)
    np.testing.assert_allclose(schedule(110), 1e-5, rtol=1e-5)


def test_ema_decay_warmup():
    np.testing.assert_allclose(optim.ema_decay(jnp.array(0), 0.999), 0.1)
    np.testing.assert_allclose(optim.ema_decay(jnp.array(90), 0.999), 91 / 100)
    np.testing.assert_allclose(optim.ema_decay(jnp.array(100_000), 0.999), 0.999)
    ema = optim.ema_update({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, jnp.array(0.75))
    np.testing.assert_allclose(ema["w"], [1.5])


def test_frozen_params_get_no_update_and_no_state():
    params = {"params": {"encoder": {"w": jnp.ones((2, 2))}, "decoder": {"w": jnp.ones((2, 2))}}}
    frozen = lambda p: optim.frozen_mask(p, frozen=("encoder",))  # noqa: E731
    opt = optim.make_optimizer(OPT, total_steps=100, frozen=frozen)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(12):
        updates, state = opt.update(grads, state, params)
    assert float(jnp.abs(updates["params"]["encoder"]["w"]).max()) == 0.0
    assert float(jnp.abs(updates["params"]["decoder"]["w"]).max()) > 0.0
    state_leaves = jax.tree_util.tree_leaves(state)
    assert sum(x.size for x in state_leaves) < 3 * 4 + 10  # mu, nu of the decoder only (+ counters)


def test_frozen_and_trainable_patterns():
    params = {
        "params": {
            "encoder": {"transformer": {f"block_{i}": {"w": jnp.ones(2)} for i in range(3)}},
            "decoder": {"transformer": {f"block_{i}": {"w": jnp.ones(2)} for i in range(3)}, "ffn": {"w": jnp.ones(2)}},
            "latent_tokens": jnp.ones(2),
        }
    }

    def frozen_names(**patterns):
        mask = optim.frozen_mask(params, **patterns)
        flat = jax.tree_util.tree_flatten_with_path(mask)[0]
        return sorted(path_name(p).removeprefix("params/") for p, frozen in flat if frozen)

    assert frozen_names(frozen=("encoder", "latent_tokens")) == [
        "encoder/transformer/block_0/w", "encoder/transformer/block_1/w", "encoder/transformer/block_2/w",
        "latent_tokens",
    ]  # fmt: skip
    # Last two decoder blocks and the head train; everything else is frozen.
    trainable = ("decoder/transformer/block_[12]/*", "decoder/ffn")
    assert len(frozen_names(trainable=trainable)) == 3 + 1 + 1
    assert "decoder/transformer/block_0/w" in frozen_names(trainable=trainable)
    assert frozen_names(trainable=("decoder",), frozen=("decoder/ffn",))[-1] == "latent_tokens"
    assert "decoder/ffn/w" in frozen_names(trainable=("decoder",), frozen=("decoder/ffn",))


def test_ema_of_a_param_that_does_not_move_stays_exactly_put():
    start = jax.random.normal(jax.random.PRNGKey(0), (1000,))
    ema = start
    for step in range(50):
        ema = optim.ema_update(ema, start, optim.ema_decay(jnp.array(step), 0.999))
    assert bool(jnp.all(ema == start))  # bit for bit, not just close
    moving = optim.ema_update(start, start + 1.0, jnp.array(0.999))
    np.testing.assert_allclose(moving, start + 1e-3, rtol=1e-5, atol=1e-5)


def test_accumulated_microbatches_equal_one_big_batch():
    """4 micro-batches of 2 give the same grads and metrics as one batch of 8 (tiny VQ model)."""
    model = model_for("titok_single_stage.py:tiny_vq")
    recipe = PixelRecipe(
        model=model,
        optimizer=optax.sgd(1.0),
        learning_rate=lambda s: 1.0,
        seed=0,
        grad_accum_steps=4,
        loss_weights=losses.SINGLE_STAGE_LOSS_WEIGHTS,
    )
    images = jax.random.uniform(jax.random.PRNGKey(0), (8, *model.image_shape))
    params = nn.meta.unbox(recipe.init_params(jax.random.PRNGKey(1), images[:1]))
    batch = {"image": images}

    def grad_fn(microbatch, key):
        grads, (metrics, reconstructions) = jax.grad(recipe.loss, has_aux=True)(params, microbatch, key, {"step": 0})
        return grads, metrics, reconstructions

    key = jax.random.PRNGKey(2)
    big = jax.jit(lambda b: accumulate(grad_fn, b, key, 1))(batch)
    micro = jax.jit(lambda b: accumulate(grad_fn, b, key, 4))(batch)
    for name in ("reconstruction_loss", "quantizer_loss", "loss"):
        np.testing.assert_allclose(micro[1][name], big[1][name], rtol=1e-5, err_msg=name)
    flat_big, flat_micro = _flat(big[0]), _flat(micro[0])
    for name, g in flat_big.items():
        np.testing.assert_allclose(flat_micro[name], g, rtol=2e-4, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(micro[2], big[2], atol=1e-6)  # reconstructions come back in order
