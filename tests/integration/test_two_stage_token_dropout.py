"""Variable-length tokens in the two-stage recipe: stage 1 predicts the teacher's proxy codes from each image's
first k tokens (the rest masked), its training grid scores every k through the teacher, stage 2 starts from
stage 1's mask vector and decodes any prefix to pixels; stages that disagree on token dropout are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import build_recipe, restore_state, tiny_config

from titok_jax import Tokenizer, losses, recipes
from titok_jax import sharding as sh
from titok_jax.data import synthetic
from titok_jax.models.titok import TiTok, draw_num_kept
from titok_jax.models.vqgan import VQGAN
from titok_jax.tasks import evaluate
from titok_jax.train.state import create_train_state

NESTED = {"model.token_dropout": "uniform"}
COUNTS = (1, 2, 4, 8, 16)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A 2-step nested stage-1 run (its end-of-run grid evaluation included) and its final metrics."""
    workdir = str(tmp_path_factory.mktemp("stage1"))
    config = tiny_config("two_stage:tiny,stage=1", total_steps=2, image_every=2, **NESTED)
    return config, workdir, recipes.train(config, workdir)


def test_stage1_learns_proxy_codes_from_each_images_prefix():
    config = tiny_config("two_stage:tiny,stage=1", **NESTED)
    recipe, frozen = build_recipe(config, random_frozen=True)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        params = jax.device_get(init().params)
    shapes = synthetic.SyntheticShapes(num_examples=8, image_size=32, seed=3)
    images = jnp.asarray(np.stack([shapes[i]["image"] for i in range(8)]), jnp.float32) / 255.0
    rng = jax.random.PRNGKey(5)
    _, (metrics, _) = recipe.loss(params, {"image": images}, rng, {**frozen, "step": jnp.int32(0)})

    # The same loss by hand: the teacher's codes against the logits of the first k tokens, k as the recipe draws.
    codes = recipe.teacher.apply(frozen["teacher"], images, method=VQGAN.encode)
    latents, _ = recipe.model.apply(params, images, method=TiTok.encode)
    kept = draw_num_kept(jax.random.fold_in(rng, 1), 8, 16, "uniform")
    assert len(np.unique(np.asarray(kept))) > 2
    masked = recipe.model.apply(params, latents, kept, method=TiTok.keep_prefix)
    logits = recipe.model.apply(params, masked, method=TiTok.decode)
    expected = losses.proxy_code_cross_entropy(logits, codes)
    np.testing.assert_allclose(float(metrics["proxy_cross_entropy"]), float(expected), rtol=1e-5)
    full = losses.proxy_code_cross_entropy(recipe.model.apply(params, latents, method=TiTok.decode), codes)
    assert abs(float(full) - float(expected)) > 1e-5  # the dropped tails changed the loss

    # token_dropout_full_pass: the full code's cross entropy plus the weighted prefix one, same draw of k.
    config.model.update(token_dropout_full_pass=True, token_dropout_prefix_weight=0.3)
    full_pass, _ = build_recipe(config, random_frozen=True)
    _, (metrics, _) = full_pass.loss(params, {"image": images}, rng, {**frozen, "step": jnp.int32(0)})
    np.testing.assert_allclose(float(metrics["prefix_proxy_cross_entropy"]), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["proxy_cross_entropy"]), float(full + 0.3 * expected), rtol=1e-5)


def test_stage1_grid_scores_every_prefix_through_the_teacher(stage1):
    _, _, metrics = stage1
    for k in COUNTS:
        assert 0 < metrics[f"eval/ema_reconstruction_mse_k{k}"] < 1
    # k = K is the normal reconstruction (all tokens kept, rendered through the teacher's decoder).
    np.testing.assert_allclose(metrics["eval/ema_reconstruction_mse_k16"], metrics["eval/ema_reconstruction_mse"])


def test_stage1_is_not_scored_in_pixels_by_token_counts(stage1):
    config, workdir, _ = stage1
    with pytest.raises(ValueError, match="stage-1 tokenizer decodes proxy codes: evaluate its stage-2 run"):
        evaluate.evaluate_token_counts(config, workdir, ["1", "16"], ["mse"])


def test_stage2_starts_from_stage1s_mask_vector_and_decodes_any_prefix(stage1, tmp_path):
    stage1_config, stage1_dir, _ = stage1
    _, stage1_state, _ = restore_state(stage1_config, stage1_dir)
    stage1_params = jax.device_get(stage1_state.ema_params["params"])

    config = tiny_config("two_stage:tiny,stage=2", total_steps=1, checkpoint_every=1, init_from=stage1_dir, **NESTED)
    workdir = str(tmp_path / "stage2")
    recipes.train(config, workdir)
    _, state, _ = restore_state(config, workdir)
    params = jax.device_get(state.params["params"])
    jax.tree.map(np.testing.assert_array_equal, params["encoder"], stage1_params["encoder"])  # frozen
    # The mask vector came from stage 1 (one step of lr-warm-up training moves it by little, not to a fresh draw).
    moved = np.abs(params["latent_mask_vector"] - stage1_params["latent_mask_vector"]).max()
    assert moved < 0.1 * np.abs(stage1_params["latent_mask_vector"]).max()

    tokenizer = Tokenizer.load(workdir, config)
    shapes = synthetic.SyntheticShapes(num_examples=4, image_size=32, seed=9)
    images = np.stack([shapes[i]["image"] for i in range(4)]).astype(np.float32) / 255.0
    tokens = tokenizer.encode(images)
    model, variables = tokenizer.model, tokenizer.variables
    latents, _ = model.apply(variables, jnp.asarray(images), sample_posterior=False, method=TiTok.encode)
    decoded = {}
    for k in (4, 16):
        masked = model.apply(variables, latents, jnp.full((4,), k), method=TiTok.keep_prefix)
        expected = np.clip(np.asarray(model.apply(variables, masked, method=TiTok.decode)), 0, 1)
        decoded[k] = tokenizer.decode(tokens[:, :k])
        np.testing.assert_allclose(decoded[k], expected, atol=1e-4)  # the VQGAN decoder's convs reassociate (6e-6)
    assert decoded[4].shape == (4, 32, 32, 3) and not np.allclose(decoded[4], decoded[16])

    results = evaluate.evaluate_token_counts(config, workdir, ["2", "16"], ["mse"], max_images=8)
    assert set(results["by_num_tokens"]) == {"2", "16"}


def test_stages_that_disagree_on_token_dropout_are_refused(stage1, tmp_path):
    _, stage1_dir, _ = stage1
    config = tiny_config("two_stage:tiny,stage=2", total_steps=1, init_from=stage1_dir)  # no token dropout
    with pytest.raises(ValueError, match="latent_mask_vector"):
        recipes.train(config, str(tmp_path / "stage2"))
