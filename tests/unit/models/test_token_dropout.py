"""Variable-length tokens (TiTok.token_dropout, nested dropout): a prefix decodes as the full sequence with the
rest masked, the published models are untouched, and one compiled train step serves every k."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import build_recipe, tiny_config

from titok_jax import Tokenizer, recipes
from titok_jax import sharding as sh
from titok_jax.convert import titok as convert_titok
from titok_jax.models.titok import TiTok, draw_num_kept, titok_from_config
from titok_jax.train import loop
from titok_jax.train.state import create_train_state
from titok_jax.train.step import train_step


def _model_and_variables(mode: str, token_dropout: str = "uniform"):
    config = tiny_config(f"single_stage:tiny_{mode}")
    config.model.token_dropout = token_dropout
    model = titok_from_config(config.model)
    variables = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    return model, jax.device_get(variables)


@pytest.mark.parametrize("mode", ["vq", "vae", "fsq", "lfq"])
def test_a_prefix_decodes_as_the_full_sequence_with_the_rest_masked(mode):
    model, variables = _model_and_variables(mode)
    assert variables["params"]["latent_mask_vector"].shape == (model.token_size,)
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3))
    latents, _ = model.apply(variables, images, sample_posterior=False, method=TiTok.encode)
    decode = jax.jit(lambda v, x: model.apply(v, x, method=TiTok.decode))
    outputs = []
    for k in (1, 5, 16):
        prefix = decode(variables, latents[:, :k])
        masked = model.apply(variables, latents, jnp.full((3,), k), method=TiTok.keep_prefix)
        np.testing.assert_array_equal(prefix, decode(variables, masked))  # bit-identical
        outputs.append(prefix)
    assert not np.allclose(outputs[0], outputs[-1])  # the kept tokens matter
    # Through the Tokenizer: ids (VQ) or latents (VAE) of any length 1..K decode.
    tokenizer = Tokenizer(model, variables)
    tokens = tokenizer.encode(np.asarray(images))
    np.testing.assert_allclose(tokenizer.decode(tokens[:, :5]), np.clip(outputs[1], 0, 1), atol=1e-6)


def test_a_tokenizer_trained_without_dropout_refuses_a_prefix_and_keeps_its_parameters():
    model, variables = _model_and_variables("vq", token_dropout="none")
    assert "latent_mask_vector" not in variables["params"]  # published layouts are unchanged
    tokenizer = Tokenizer(model, variables)
    tokens = tokenizer.encode(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="trained without token dropout: decode takes all 16 tokens, got 4"):
        tokenizer.decode(tokens[:, :4])
    assert tokenizer.decode(tokens).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="no variable-length"):
        convert_titok.hub_config_from_fields(_model_and_variables("vq")[0], allow_custom_sizes=True)
    with pytest.raises(ValueError, match="token_dropout='sometimes' is not one of"):
        TiTok(token_dropout="sometimes").init(jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)))


def test_kept_counts_follow_the_distributions():
    uniform = np.asarray(draw_num_kept(jax.random.PRNGKey(0), 4000, 16, "uniform"))
    assert uniform.min() == 1 and uniform.max() == 16 and len(np.unique(uniform)) == 16
    pow2 = np.asarray(draw_num_kept(jax.random.PRNGKey(0), 4000, 16, "pow2"))
    assert set(np.unique(pow2)) == {1, 2, 4, 8, 16}
    assert set(np.unique(np.asarray(draw_num_kept(jax.random.PRNGKey(1), 4000, 12, "pow2")))) == {1, 2, 4, 8, 12}
    # token_dropout_rate 0.5: half the images keep all 16, the other half draw (1/16 of those also 16).
    half = np.asarray(draw_num_kept(jax.random.PRNGKey(2), 4000, 16, "uniform", rate=0.5))
    assert abs(np.mean(half == 16) - (0.5 + 0.5 / 16)) < 0.03  # binomial sd 0.008
    assert abs(np.mean(half) - (0.5 * 16 + 0.5 * 8.5)) < 0.3


def test_one_compiled_step_serves_every_k():
    config = tiny_config("single_stage:tiny_vq_nested")
    assert config.model.token_dropout == "uniform"
    recipe, frozen = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    _, init, shardings = create_train_state(recipe, config, mesh)
    traced = chex.assert_max_traces(n=1)(train_step)
    step = jax.jit(
        lambda s, b, f: traced(s, b, f, recipe=recipe, phase=False),
        in_shardings=(shardings, None, None),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    train_iter = iter(recipes.lookup(config).make_data(config)[0])
    kept = []
    with jax.set_mesh(mesh):
        state = init()
        frozen = jax.device_put(frozen, sh.replicated(mesh))
        for index in range(3):
            rng = jax.random.fold_in(jax.random.PRNGKey(recipe.seed), index)  # the step's key, as train_step
            kept.append(np.asarray(draw_num_kept(jax.random.fold_in(rng, 1), config.batch_size, 16, "uniform")))
            state, metrics = step(state, loop.global_batch(next(train_iter), mesh), frozen)
            assert np.isfinite(float(metrics["loss"]))
    chex.clear_trace_counter()
    assert not np.array_equal(kept[0], kept[1])  # each step drew other counts, all through the one trace


def test_the_full_pass_trains_the_full_code_and_the_weighted_prefix():
    config = tiny_config("single_stage:tiny_vq_nested", **{"model.token_dropout_prefix_weight": 0.3})
    assert config.model.token_dropout_full_pass
    recipe, frozen = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        params = jax.device_get(init().params)
    images = jax.random.uniform(jax.random.PRNGKey(3), (8, 32, 32, 3))
    rng = jax.random.PRNGKey(4)
    _, (metrics, decoded) = recipe.loss(params, {"image": images}, rng, {**frozen, "step": jnp.int32(0)})

    # By hand: all 16 tokens decoded, and the first k (k as the recipe draws it) with the rest masked.
    model = recipe.model
    latents, _ = model.apply(params, images, method=TiTok.encode)
    kept = draw_num_kept(jax.random.fold_in(rng, 1), 8, 16, "uniform")
    assert len(np.unique(np.asarray(kept))) > 2
    full = model.apply(params, latents, method=TiTok.decode)
    prefix = model.apply(params, model.apply(params, latents, kept, method=TiTok.keep_prefix), method=TiTok.decode)
    full_l2, prefix_l2 = (float(jnp.mean(jnp.square(x - images))) for x in (full, prefix))
    assert abs(full_l2 - prefix_l2) > 1e-5
    np.testing.assert_allclose(float(metrics["prefix_reconstruction_loss"]), prefix_l2, rtol=1e-5)
    weight = recipe.loss_weights.reconstruction_weight
    np.testing.assert_allclose(float(metrics["reconstruction_loss"]), weight * (full_l2 + 0.3 * prefix_l2), rtol=1e-5)
    np.testing.assert_allclose(decoded, np.clip(full, 0, 1), atol=1e-5)  # the grid shows the full decode


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"token_dropout": "none", "token_dropout_full_pass": True}, "token_dropout_full_pass is for variable-length"),
        ({"token_dropout_prefix_weight": 0.0}, "token_dropout_prefix_weight=0.0 must be positive"),
        ({"token_dropout_full_pass": False, "token_dropout_prefix_weight": 0.5}, "set token_dropout_full_pass=True"),
    ],
)
def test_full_pass_settings_that_make_no_sense_are_refused(fields, message):
    config = tiny_config("single_stage:tiny_vq_nested", **{f"model.{k}": v for k, v in fields.items()})
    with pytest.raises(ValueError, match=message):
        titok_from_config(config.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_causal_latents_keep_earlier_tokens_independent_of_later_ones(scan_layers):
    config = tiny_config("single_stage:tiny_vae")
    config.model.update(token_dropout="uniform", causal_latents=True, scan_layers=scan_layers)
    model = titok_from_config(config.model)
    variables = jax.device_get(nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))))
    images = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3))
    encode = jax.jit(lambda v: model.apply(v, images, sample_posterior=False, method=TiTok.encode)[0])
    before = np.asarray(encode(variables))
    j = 6
    changed = jax.tree.map(np.array, variables)
    changed["params"]["latent_tokens"][j] += np.random.default_rng(0).normal(size=model.encoder_width)  # token j
    after = np.asarray(encode(changed))
    np.testing.assert_array_equal(after[:, :j], before[:, :j])  # tokens before j cannot see it
    assert np.abs(after[:, j] - before[:, j]).max() > 1e-3
    # Without the mask every token sees token j.
    config.model.causal_latents = False
    full = titok_from_config(config.model)
    full_encode = jax.jit(lambda v: full.apply(v, images, sample_posterior=False, method=TiTok.encode)[0])
    assert np.abs(np.asarray(full_encode(changed))[:, :j] - np.asarray(full_encode(variables))[:, :j]).max() > 1e-4
