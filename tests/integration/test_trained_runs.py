"""Reading trained runs never builds their training: a stage-2 tokenizer trained with a perceptual loss is
pretokenized, exported, evaluated and modelled by a generator after its perceptual weights are gone; the
stage-2 warm start reads the teacher file once and builds no stage-1 recipe; `Generator.load` of a training
workdir, an exported bundle and an official-layout checkpoint samples exactly the training-time sampler's
tokens."""

import json
import os
import shutil

import flax.serialization
import jax
import numpy as np
import pytest
from helpers import TWO_STAGE
from train_helpers import (
    build_recipe,
    restore_state,
    tiny_config,
    tiny_generator_config,
    write_official_generator,
    write_tokenizer,
)

from titok_jax import Generator, Tokenizer, recipes
from titok_jax import sharding as sh
from titok_jax.convert import perceptual as convert_perceptual
from titok_jax.inference import pretokenize
from titok_jax.recipes import teacher
from titok_jax.recipes import tokenizer as tokenizer_recipe
from titok_jax.tasks import evaluate, export, sample
from titok_jax.train import loop

STAGE2 = f"{TWO_STAGE}:tiny,stage=2"


@pytest.mark.slow
def test_stage2_with_a_perceptual_loss_is_read_without_its_weights(tmp_path):
    stage1_dir, stage2_dir = str(tmp_path / "stage1"), str(tmp_path / "stage2")
    recipes.train(tiny_config("two_stage:tiny,stage=1", total_steps=2), stage1_dir)
    weights = str(tmp_path / "perceptual.safetensors")
    convert_perceptual.save_perceptual_params(tokenizer_recipe._random_perceptual_params(["lpips"]), weights)
    config = tiny_config(
        "two_stage:tiny,stage=2",
        total_steps=2,
        init_from=stage1_dir,
        **{
            "losses.perceptual_weight": 0.1,
            "perceptual.weights": weights,
            "perceptual.lpips_weight": 1.0,
            "perceptual.convnext_weight": 0.0,
        },
    )
    metrics = recipes.train(config, stage2_dir)
    assert metrics["perceptual_loss"] > 0  # the perceptual loss was on
    os.remove(weights)  # reading the run must not need it

    tokens_dir = str(tmp_path / "tokens")
    metadata = pretokenize.pretokenize(config, stage2_dir, tokens_dir, shard_size=128, batch_size=32)
    assert metadata["checkpoint_step"] == 2 and metadata["num_examples"] == config.data.num_examples
    summary = export.export(config, stage2_dir, str(tmp_path / "bundle"))
    assert summary["step"] == 2 and Tokenizer.load(str(tmp_path / "bundle")).model.decodes_to_pixels
    results = evaluate.evaluate_workdir(config, stage2_dir, ["psnr", "codebook"], max_images=8)
    assert results["num_images"] == 8 and np.isfinite(results["psnr"]) and 0 < results["codebook_usage"] <= 1
    with open(os.path.join(stage2_dir, "eval", "step_2.json")) as f:
        assert json.load(f)["psnr"] == results["psnr"]

    generator = tiny_generator_config(stage2_dir, tokens_dir, total_steps=2, **{"tokenizer.config": STAGE2})
    generator_dir = str(tmp_path / "generator")
    assert np.isfinite(recipes.train(generator, generator_dir)["loss"])
    samples = sample.sample(generator, generator_dir, num_images=8, output_dir=str(tmp_path / "samples"), batch_size=8)
    assert samples["shape"] == [8, 32, 32, 3]


def test_stage2_warm_start_reads_the_teacher_once_and_builds_no_stage1_recipe(tmp_path, monkeypatch):
    stage1 = tiny_config("two_stage:tiny,stage=1")
    saved = []
    write_tokenizer(stage1, str(tmp_path / "stage1"), edit=lambda state: saved.append(state) or state)
    _, teacher_variables = teacher.load_teacher(stage1.teacher, 32, seed=3)  # random_init: no file
    teacher_file = tmp_path / "teacher.msgpack"
    teacher_file.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(teacher_variables)))
    config = tiny_config(
        "two_stage:tiny,stage=2",
        total_steps=1,
        init_from=str(tmp_path / "stage1"),
        **{"teacher.random_init": False, "teacher.checkpoint": str(teacher_file)},
    )

    reads = []
    real_read = teacher.load_vqgan_variables
    monkeypatch.setattr(teacher, "load_vqgan_variables", lambda *a, **k: reads.append(a[0]) or real_read(*a, **k))

    def no_stage1_recipe(*args, **kwargs):
        raise AssertionError("the stage-2 warm start built a stage-1 recipe")

    monkeypatch.setattr(tokenizer_recipe, "Stage1Recipe", no_stage1_recipe)
    workdir = str(tmp_path / "stage2")
    recipes.train(config, workdir)
    assert reads == [str(teacher_file)]

    # The run started from stage 1's EMA params and the teacher's pixel decoder (the encoder stays frozen).
    _, state, _ = restore_state(config, workdir)
    params = jax.device_get(state.params["params"])
    expected = jax.device_get(saved[0].ema_params["params"])
    for key in ("encoder", "quantize", "latent_tokens"):
        jax.tree.map(np.testing.assert_array_equal, params[key], expected[key])
    np.testing.assert_array_equal(
        params["pixel_quantize"]["codebook"], np.asarray(teacher_variables["params"]["quantizer"]["codebook"])
    )


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory):
    """A tiny generator trained 4 steps over pretokenized shards of a tokenizer workdir, and its tokenizer."""
    root = tmp_path_factory.mktemp("generator_api")
    tokenizer_config = tiny_config("single_stage:tiny_vq", **{"data.num_examples": 64})
    tokenizer_dir, tokens_dir, workdir = (str(root / d) for d in ("tokenizer", "tokens", "generator"))
    write_tokenizer(tokenizer_config, tokenizer_dir)
    pretokenize.pretokenize(tokenizer_config, tokenizer_dir, tokens_dir, shard_size=64, batch_size=16)
    config = tiny_generator_config(tokenizer_dir, tokens_dir)
    recipes.train(config, workdir)
    return config, workdir, root


def _training_sampler_tokens(config, workdir, class_ids, key):
    """What the training loop's sampler draws: the recipe's `sample` on the run's EMA params, with the class
    ids sharded as the loop shards its grid batch."""
    recipe, _ = build_recipe(config)
    _, state, _ = restore_state(config, workdir)
    mesh = sh.make_mesh(**config.mesh)
    with jax.set_mesh(mesh):
        labels = loop.global_batch({"label": class_ids}, mesh)["label"]
        return np.asarray(jax.jit(recipe.sample)(state.ema_params, labels, key))


def test_generator_load_samples_the_training_samplers_tokens(generator_run):
    config, workdir, root = generator_run
    class_ids = np.arange(16, dtype=np.int32) % config.model.num_classes
    seed = 5
    expected = _training_sampler_tokens(config, workdir, class_ids, jax.random.fold_in(jax.random.PRNGKey(seed), 0))
    assert len(np.unique(expected)) > 16  # real samples, not one code

    from_workdir = Generator.load(workdir, config)
    images, tokens = from_workdir.generate(class_ids, seed=seed, batch_size=16)
    np.testing.assert_array_equal(tokens, expected)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8

    export.export(config, workdir, str(root / "bundle"))
    from_bundle = Generator.load(str(root / "bundle"))  # its tokenizer travels inside the bundle
    bundle_images, bundle_tokens = from_bundle.generate(class_ids, seed=seed, batch_size=16)
    np.testing.assert_array_equal(bundle_tokens, expected)
    np.testing.assert_array_equal(bundle_images, images)

    write_official_generator(from_workdir.model, from_workdir.variables, from_workdir.settings, root / "official")
    from_official = Generator.load(str(root / "official"), tokenizer=str(root / "bundle" / "tokenizer"))
    assert from_official.settings == from_workdir.settings
    np.testing.assert_array_equal(from_official.generate(class_ids, seed=seed, batch_size=16)[1], expected)


def test_generator_load_refusals(generator_run, tmp_path):
    config, workdir, _ = generator_run
    # A workdir loads with the config its run recorded; without that record it needs the experiment config.
    np.testing.assert_array_equal(
        Generator.load(workdir).generate([1, 2])[1], Generator.load(workdir, config).generate([1, 2])[1]
    )
    shutil.copytree(workdir, tmp_path / "unrecorded")
    os.remove(tmp_path / "unrecorded" / "run_config.json")
    with pytest.raises(ValueError, match=r"without run_config\.json; pass its experiment config"):
        Generator.load(str(tmp_path / "unrecorded"))
    (tmp_path / "official").mkdir()
    with pytest.raises(ValueError, match="pass tokenizer= the tokenizer it models"):
        Generator.load(str(tmp_path / "official"))
    with pytest.raises(ValueError, match=r"Class ids must lie in \[0, 10\)"):
        Generator.load(workdir, config).generate([10])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint; it is not a generator workdir"):
        Generator.load(str(tmp_path / "empty"), config)
