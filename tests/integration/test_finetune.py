"""Fine-tuning starts (config.init_from): weights from an official hub directory, a bundle, a workdir or an
official generator checkpoint become step 0 of a fresh run; skipped parameters keep their init, frozen ones
do not move, tables resize only by an explicit rule, and anything that does not fit fails before compiling
with every offending key named. (Resume beats init_from under kill -9: tests/integration/test_train_driver.py.)"""

import shutil
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from train_helpers import (
    build_recipe,
    restore_state,
    tiny_config,
    tiny_generator_config,
    write_official_generator,
    write_tokenizer,
)

from titok_jax import Tokenizer, recipes
from titok_jax import sharding as sh
from titok_jax.convert import titok as convert_titok
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.models import layer_stack
from titok_jax.models.maskgit import maskgit_from_config
from titok_jax.models.titok import titok_from_config
from titok_jax.sampling import SamplingSettings
from titok_jax.train import loop, run_config
from titok_jax.train.state import create_train_state

TINY_VQ = "single_stage:tiny_vq"


def _random_variables(model, inputs, seed):
    """{"params": host arrays} of `model` drawn with `seed` (unlike any run's own init)."""
    return jax.device_get({"params": nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), *inputs))["params"]})


def _tokenizer_source(config, seed=7):
    """A tiny tokenizer's model and weights that are nobody's init: random ones, scaled (so that a run that
    starts from them is told apart from one that starts from its own init by its first loss)."""
    model = titok_from_config(config.model)
    variables = _random_variables(model, (jnp.zeros((1, *model.image_shape)),), seed)
    return model, jax.tree.map(lambda x: x * 1.5, variables)


def _step0_loss(config, variables):
    """The recipe's loss of `variables` on the run's first batch with its step-0 key, outside the driver."""
    recipe, frozen = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    train_iter, _ = recipes.lookup(config).make_data(config)
    with jax.set_mesh(mesh):
        batch = loop.global_batch(next(iter(train_iter)), mesh)
        context = recipe.step_context(types.SimpleNamespace(step=jnp.zeros((), jnp.int32)), frozen, recipe.phases[0])
        rng = jax.random.fold_in(jax.random.PRNGKey(recipe.seed), 0)
        loss, _ = jax.jit(recipe.loss)(variables, batch, rng, context)
    return float(loss)


def _warm_started(config, workdir):
    """The train state a run of `config` in `workdir` starts from (prepare -> init -> warm start)."""
    mesh = sh.make_mesh(**config.mesh)
    plan = recipes.lookup(config).prepare(config, mesh, workdir)
    _, init, _ = create_train_state(plan.recipe, config, mesh)
    with jax.set_mesh(mesh):
        state = init()
        return jax.device_get(plan.warm_start(state) if plan.warm_start else state)


def _flat(params):
    return traverse_util.flatten_dict(dict(params["params"]), sep="/")


def _held_out_mse(tokenizer, images):
    return float(np.mean(np.square(tokenizer.reconstruct(images) - images)))


def test_a_hub_directory_starts_the_run_and_a_short_fine_tune_lowers_the_held_out_loss(tmp_path):
    config = tiny_config(TINY_VQ, total_steps=1, log_every=1)
    model, variables = _tokenizer_source(config)
    hub = str(tmp_path / "hub")
    convert_titok.save_hub_tokenizer(model, variables, hub, allow_custom_sizes=True)
    config.init_from = hub
    workdir = str(tmp_path / "run")
    first = recipes.train(config, workdir)

    loaded = Tokenizer.load(hub)
    expected = _step0_loss(config, loaded.host_variables())
    scratch = _step0_loss(config, jax.device_get(_warm_started(tiny_config(TINY_VQ), str(tmp_path / "x")).params))
    print(f"step-0 loss: fine-tune {first['loss']:.6f}, loaded model {expected:.6f}, from scratch {scratch:.6f}")
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(scratch - expected) > 0.05 * expected  # the comparison tells the two starts apart

    # 40 more steps resume the run (the source is not read again: it is gone) and lower the held-out loss.
    shutil.rmtree(hub)
    config.total_steps, config.log_every = 41, 41
    recipes.train(config, workdir)
    images = recipes.lookup(config).make_data(config)[1]["image"]
    before, after = _held_out_mse(loaded, images), _held_out_mse(Tokenizer.load(workdir), images)
    print(f"held-out MSE: loaded {before:.5f}, after 41 fine-tune steps {after:.5f}")
    assert after < 0.7 * before


def test_a_bundle_and_a_workdir_start_the_run_bit_for_bit_with_the_ema_at_the_loaded_weights(tmp_path):
    config = tiny_config(TINY_VQ)
    model, variables = _tokenizer_source(config)
    bundle = tokenizer_lib.save_bundle(Tokenizer(model, variables), str(tmp_path / "bundle"))
    source_dir, saved = str(tmp_path / "source"), []

    def distinct_ema(state):  # a workdir gives its EMA params, not the raw ones
        state = state.replace(ema_params=jax.tree.map(lambda x: x * 0.5 + 0.1, state.ema_params))
        return saved.append(jax.device_get(state.ema_params)) or state

    write_tokenizer(tiny_config(TINY_VQ, seed=3), source_dir, edit=distinct_ema)
    scanned = {"model.scan_layers": True}  # the workdir read into the other ViT block layout
    for source, expected, overrides in ((bundle, variables, {}), (source_dir + "/checkpoints", saved[0], scanned)):
        run = tiny_config(TINY_VQ, init_from=source, **overrides)
        state = _warm_started(run, str(tmp_path / "run"))
        got = _flat(layer_stack.unstack_blocks(state.params))
        want = _flat(expected)
        assert set(got) == set(want)
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
        assert int(state.step) == 0


def test_an_official_generator_checkpoint_starts_a_generator_run_and_classes_resize_by_rule(tmp_path):
    write_tokenizer(tiny_config(TINY_VQ), str(tmp_path / "tokenizer"))
    config = tiny_generator_config(str(tmp_path / "tokenizer"), total_steps=1, log_every=1)
    model = maskgit_from_config(config.model)
    ids, labels = jnp.zeros((1, model.num_tokens), jnp.int32), jnp.zeros((1,), jnp.int32)
    variables = _random_variables(model, (ids, labels), seed=11)
    official = str(tmp_path / "official")
    write_official_generator(model, variables, SamplingSettings.from_config(config.sampling), official)

    config.init_from = official
    first = recipes.train(config, str(tmp_path / "run"))
    expected = _step0_loss(config, variables)
    print(f"generator step-0 loss: fine-tune {first['loss']:.6f}, loaded model {expected:.6f}")
    assert first["loss"] == pytest.approx(expected, rel=1e-5)

    # New classes: refused without the rule (naming the table and both shapes), moved row by row with it.
    more = tiny_generator_config(str(tmp_path / "tokenizer"), init_from=official, **{"model.num_classes": 12})
    with pytest.raises(ValueError, match=r"word_embeddings/embedding: source \(\d+, 32\), model \(\d+, 32\)"):
        _warm_started(more, str(tmp_path / "more"))
    more.init_from_resize = ("class_table",)
    state = _warm_started(more, str(tmp_path / "more"))
    table, old = (
        state.params["params"]["word_embeddings"]["embedding"],
        variables["params"]["word_embeddings"]["embedding"],
    )
    codes = model.codebook_size + 1 + model.num_classes  # codes, mask and the 10 known classes
    assert table.shape[0] == old.shape[0] + 2
    np.testing.assert_array_equal(table[:codes], old[:codes])
    np.testing.assert_array_equal(table[-1], old[-1])  # the null class
    assert not np.array_equal(table[codes : codes + 2], old[codes - 2 : codes])  # the new classes start fresh


def test_skipped_parameters_keep_their_init_and_frozen_ones_do_not_move(tmp_path):
    config = tiny_config(TINY_VQ, total_steps=3)
    model, variables = _tokenizer_source(config)
    bundle = tokenizer_lib.save_bundle(Tokenizer(model, variables), str(tmp_path / "bundle"))
    fresh = _flat(jax.device_get(_warm_started(config, str(tmp_path / "scratch")).params))
    config.update(init_from=bundle, init_from_skip=("quantize",), frozen=("encoder", "latent_tokens"))
    start = _flat(_warm_started(config, str(tmp_path / "peek")).params)
    np.testing.assert_array_equal(start["quantize/codebook"], fresh["quantize/codebook"])  # a new codebook
    np.testing.assert_array_equal(start["decoder/ffn_pixels/kernel"], _flat(variables)["decoder/ffn_pixels/kernel"])

    workdir = str(tmp_path / "run")
    recipes.train(config, workdir)
    _, state, step = restore_state(config, workdir)
    assert step == 3
    params, ema = _flat(jax.device_get(state.params)), _flat(jax.device_get(state.ema_params))
    loaded = _flat(variables)
    for name in loaded:
        if name.startswith(("encoder/", "latent_tokens")):
            np.testing.assert_array_equal(params[name], loaded[name], err_msg=name)
            np.testing.assert_array_equal(ema[name], loaded[name], err_msg=name)
    assert not np.array_equal(params["decoder/ffn_pixels/kernel"], loaded["decoder/ffn_pixels/kernel"])


def test_what_does_not_fit_fails_before_compiling_and_names_every_key(tmp_path, monkeypatch):
    config = tiny_config(TINY_VQ)
    model, variables = _tokenizer_source(config)
    bundle = tokenizer_lib.save_bundle(Tokenizer(model, variables), str(tmp_path / "bundle"))
    monkeypatch.setattr(loop, "create_train_state", lambda *a: pytest.fail("compiled before refusing"))
    fewer = tiny_config(TINY_VQ, init_from=bundle, **{"model.num_latent_tokens": 8})
    with pytest.raises(ValueError) as raised:
        recipes.train(fewer, str(tmp_path / "run"))
    message = str(raised.value)
    for key in (
        "latent_tokens",
        "encoder/latent_token_positional_embedding",
        "decoder/latent_token_positional_embedding",
    ):
        assert f"{key}: source (16, 64), model (8, 64)" in message, message
    assert "in 3 parameter(s)" in message and "init_from_resize (grid_positions, latent_tokens)" in message
    with pytest.raises(ValueError, match="pattern 'decoder/ffn_pixel' matches no parameter"):
        recipes.train(tiny_config(TINY_VQ, init_from=bundle, frozen=("decoder/ffn_pixel",)), str(tmp_path / "run"))
    generator_dir = tmp_path / "generator"  # a generator's workdir, as its run recorded it
    (generator_dir / "checkpoints").mkdir(parents=True)
    run_config.record(str(generator_dir), tiny_generator_config(str(tmp_path / "tokenizer")))
    with pytest.raises(ValueError, match=r"holds a generator \(maskgit run\), not a tokenizer"):
        recipes.train(tiny_config(TINY_VQ, init_from=str(generator_dir)), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
