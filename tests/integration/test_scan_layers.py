"""Scanned ViT blocks (scan_layers): layout conversions, equal outputs, sharding, export and restores."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RNGS, abstract_params, count_params
from jax.sharding import PartitionSpec as P
from train_helpers import restore_state, tiny_config, write_tokenizer

from titok_jax import Tokenizer, optim, recipes
from titok_jax import sharding as sh
from titok_jax.data import synthetic
from titok_jax.inference import bundle
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.models import layer_stack
from titok_jax.models.titok import titok_from_config
from titok_jax.recipes import teacher
from titok_jax.recipes import tokenizer as tokenizer_recipe
from titok_jax.tasks.export import export as export_tokenizer
from titok_jax.train.state import create_train_state
from titok_jax.trees import path_name

# Encoder depth 3 against the decoder's 2: a depth axis taken from the wrong transformer cannot fit.
SCANNED = {"model.scan_layers": True, "model.encoder_depth": 3}
PLAIN = {"model.encoder_depth": 3}


@pytest.fixture(scope="module")
def scanned_run(tmp_path_factory):
    """(config, workdir, EMA params) of a scanned tiny_vq checkpoint, written without training."""
    config = tiny_config(**SCANNED)
    workdir = str(tmp_path_factory.mktemp("scanned") / "run")
    saved = []
    write_tokenizer(config, workdir, edit=lambda state: saved.append(state) or state)
    return config, workdir, jax.device_get(saved[0].ema_params)


@pytest.fixture(scope="module")
def models(scanned_run):
    scanned = titok_from_config(scanned_run[0].model)
    return scanned.clone(scan_layers=False), scanned


@pytest.fixture(scope="module")
def params(scanned_run):
    """Unscanned params (from the scanned init: the two layouts' inits need not agree)."""
    return layer_stack.unstack_blocks(scanned_run[2])


@pytest.fixture(scope="module")
def images():
    shapes = synthetic.SyntheticShapes(num_examples=4, image_size=32, seed=3)
    return np.stack([shapes[i]["image"] for i in range(4)])


def test_stack_unstack_round_trip_is_exact(models, params, scanned_run):
    model, scanned = models
    stacked = layer_stack.stack_blocks(params)
    chex.assert_trees_all_equal(stacked, scanned_run[2])
    encoder = stacked["params"]["encoder"]["transformer"]
    assert list(encoder) == ["blocks"] and encoder["blocks"]["mlp"]["fc"]["kernel"].shape == (3, 64, 256)
    np.testing.assert_array_equal(
        encoder["blocks"]["attn"]["qkv_kernel"][2],
        params["params"]["encoder"]["transformer"]["block_2"]["attn"]["qkv_kernel"],
    )
    chex.assert_trees_all_equal(layer_stack.unstack_blocks(stacked), params)
    # Converting into the layout a tree already has changes nothing.
    chex.assert_trees_all_equal(layer_stack.stack_blocks(stacked), stacked)
    chex.assert_trees_all_equal(layer_stack.to_layout(params, scan_layers=False), params)
    assert layer_stack.scanned_layout(stacked) is True and layer_stack.scanned_layout(params) is False
    assert layer_stack.scanned_layout({"quantize": {"codebook": np.zeros(2)}}) is None

    # The stacked tree is the scanned model's own tree; abstract trees convert the same way.
    chex.assert_trees_all_equal_shapes_and_dtypes(stacked, abstract_params(scanned))
    assert layer_stack.stack_blocks(abstract_params(model)) == abstract_params(scanned)
    assert layer_stack.unstack_blocks(abstract_params(scanned)) == abstract_params(model)

    block = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match=r"block_0 \.\. block_\{depth-1\}; got block indices \[0, 2\]"):
        layer_stack.stack_blocks({"transformer": {"block_0": block, "block_2": block}})
    with pytest.raises(ValueError, match="mixes scanned"):
        layer_stack.scanned_layout({"a": {"transformer": {"blocks": block}}, "b": {"transformer": {"block_0": block}}})


@pytest.fixture(scope="module")
def reference(models, params, images):
    """The unscanned model's loss, reconstruction, code indices and loss gradients."""
    return jax.jit(jax.value_and_grad(_loss(models[0], images), has_aux=True))(params)


def _loss(model, images):
    x = jnp.asarray(images, jnp.float32) / 255

    def loss(params):
        reconstruction, info = model.apply(params, x, sample_posterior=False)
        return jnp.mean(jnp.square(reconstruction - x)), (reconstruction, info["indices"])

    return loss


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_scanned_model_computes_what_the_unscanned_one_does(models, params, images, reference, remat_policy):
    scanned = models[1].clone(remat_policy=remat_policy)
    stacked = layer_stack.stack_blocks(params)
    (want_loss, (want_reconstruction, want_indices)), want_grads = reference
    if remat_policy == "full":  # remat only changes the backward pass: compare gradients there
        (loss, (reconstruction, indices)), grads = jax.jit(jax.value_and_grad(_loss(scanned, images), has_aux=True))(
            stacked
        )
        chex.assert_trees_all_close(layer_stack.unstack_blocks(jax.device_get(grads)), want_grads, atol=1e-6)
    else:
        loss, (reconstruction, indices) = jax.jit(_loss(scanned, images))(stacked)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(reconstruction, want_reconstruction, atol=1e-5)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)


def test_param_count_and_the_layers_axis(models):
    model, scanned = models
    assert count_params(abstract_params(scanned)) == count_params(abstract_params(model))
    images = jax.ShapeDtypeStruct((8, *model.image_shape), jnp.float32)

    def boxed(m):
        return jax.eval_shape(lambda x: m.init(RNGS, x), images)["params"]

    specs = nn.get_partition_spec(boxed(scanned))
    assert specs["encoder"]["transformer"]["blocks"]["attn"]["qkv_kernel"] == P(
        sh.LAYERS, sh.EMBED, sh.QKV, sh.HEADS, sh.HEAD_DIM
    )
    # On the mesh: every scanned leaf is sharded as its unscanned block, with the layers axis replicated.
    mesh = sh.make_mesh(data=2, fsdp=2, tensor=2)
    scanned_shardings, plain_shardings = (sh.logical_shardings(boxed(m), mesh) for m in (scanned, model))
    for part in ("encoder", "decoder"):
        got = jax.tree.map(lambda s: s.spec, scanned_shardings[part]["transformer"]["blocks"])
        want = jax.tree.map(lambda s: P(None, *s.spec), plain_shardings[part]["transformer"]["block_0"])
        assert got == want
    assert scanned_shardings["decoder"]["transformer"]["blocks"]["mlp"]["fc"]["kernel"].spec == P(
        None, "fsdp", "tensor"
    )

    # Weight decay is decided per layer, as for the unscanned blocks.
    def decay_mask(m):
        flat, _ = jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(abstract_params(m)))
        return {path_name(path).replace("/blocks/", "/block_0/"): decays for path, decays in flat}

    plain_mask = {k: v for k, v in decay_mask(model).items() if "/block_" not in k or "/block_0/" in k}
    assert decay_mask(scanned) == plain_mask
    assert plain_mask["params/encoder/transformer/block_0/mlp/fc/kernel"] is True
    assert plain_mask["params/encoder/transformer/block_0/ln_1/scale"] is False


def test_export_unstacks_and_reconstructs_like_the_scanned_model(scanned_run, images, tmp_path):
    config, workdir, _ = scanned_run
    recipe, state, _ = restore_state(config, workdir)
    ema = jax.device_get(state.ema_params)
    assert recipe.model.scan_layers and layer_stack.scanned_layout(ema) is True

    export_tokenizer(config, workdir, str(tmp_path / "bundle"))
    assert bundle.read_header(str(tmp_path / "bundle"))["model"]["scan_layers"] is False
    loaded = Tokenizer.load(str(tmp_path / "bundle"))
    assert loaded.model == recipe.model.clone(scan_layers=False)
    chex.assert_trees_all_equal(jax.device_get(loaded.variables), layer_stack.unstack_blocks(ema))
    reference = Tokenizer(recipe.model, ema)  # the scanned training model
    tokens = loaded.encode(images)
    np.testing.assert_array_equal(tokens, reference.encode(images))
    np.testing.assert_allclose(loaded.decode(tokens), reference.decode(tokens), atol=1e-5)


def test_frozen_tokenizer_takes_its_configs_layout(scanned_run, images):
    config, workdir, _ = scanned_run
    scanned_model, scanned = tokenizer_lib.restore_workdir(workdir, config)
    scanned_params, identity = jax.device_get(scanned.variables), Tokenizer.load(workdir, config).identity()
    # The layout is read from the checkpoint: a config without scan_layers restores the run too.
    plain_model, plain = tokenizer_lib.restore_workdir(workdir, tiny_config(**PLAIN))
    plain_params, plain_identity = (
        jax.device_get(plain.variables),
        Tokenizer.load(workdir, tiny_config(**PLAIN)).identity(),
    )
    assert scanned_model.scan_layers and not plain_model.scan_layers
    assert layer_stack.scanned_layout(scanned_params) is True
    chex.assert_trees_all_equal(layer_stack.unstack_blocks(scanned_params), plain_params)
    assert identity == plain_identity
    x = jnp.asarray(images, jnp.float32) / 255
    np.testing.assert_array_equal(
        tokenizer_lib.encode(scanned_model, scanned_params, x),
        tokenizer_lib.encode(plain_model, plain_params, x),
    )


def test_resuming_with_the_other_layout_is_refused(scanned_run):
    workdir = scanned_run[1]
    with pytest.raises(ValueError, match=r"hold scanned ViT blocks.*resume with --config.model.scan_layers=True"):
        recipes.train(tiny_config(**PLAIN), workdir)


def _zero_teacher(config, image_size, seed):
    """The tiny teacher with zero weights: built without compiling (its values play no part in layouts)."""
    model = teacher.teacher_model(config)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(seed), images))
    return model, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


def test_stage2_starts_from_a_stage1_run_of_the_other_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher, "load_teacher", _zero_teacher)
    stage1_config = tiny_config("two_stage:tiny", **{"model.scan_layers": True})
    saved = []
    write_tokenizer(stage1_config, str(tmp_path / "stage1"), edit=lambda state: saved.append(state) or state)
    config = tiny_config("two_stage:tiny,stage=2", init_from=str(tmp_path / "stage1"))
    assert not config.model.scan_layers
    mesh = sh.make_mesh(**config.mesh)
    plan = tokenizer_recipe.prepare(config, mesh, str(tmp_path / "stage2"))
    _, init, _ = create_train_state(plan.recipe, config, mesh)
    with jax.set_mesh(mesh):
        state = plan.warm_start(init())
    expected = layer_stack.unstack_blocks(jax.device_get(saved[0].ema_params["params"]))
    got = jax.device_get(state.params["params"])
    assert set(expected) < set(got)  # stage 2 adds the pixel decoder
    for key, value in expected.items():
        chex.assert_trees_all_equal(got[key], value)
