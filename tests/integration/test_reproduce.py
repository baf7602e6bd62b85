"""The reproduction harness on a fixture: random-weight official-layout checkpoints (a tiny tokenizer hub
directory, a tiny official generator) and a tiny image folder, through the command's own run()."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_helpers import tiny_config, tiny_generator_config, write_official_generator

from titok_jax import evaluate as evaluate_command
from titok_jax import reproduce as reproduce_command
from titok_jax.convert import titok as convert_titok
from titok_jax.data import synthetic
from titok_jax.evaluation import fid
from titok_jax.models.maskgit import maskgit_from_config
from titok_jax.models.titok import titok_from_config
from titok_jax.sampling import SamplingSettings
from titok_jax.tasks import reproduce


@pytest.fixture(scope="module")
def hub_tokenizer(tmp_path_factory):
    """The tiny VQ tokenizer with random weights, written in the official hub layout."""
    config = tiny_config("single_stage:tiny_vq")
    model = titok_from_config(config.model)
    variables = jax.device_get(
        {"params": nn.meta.unbox(model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3))))["params"]}
    )
    hub = str(tmp_path_factory.mktemp("hub") / "tokenizer")
    convert_titok.save_hub_tokenizer(model, variables, hub, allow_custom_sizes=True)
    return hub


def test_a_released_tokenizer_on_an_image_folder_prints_ours_next_to_the_published(hub_tokenizer, tmp_path):
    images = tmp_path / "val" / "n01440764"
    images.mkdir(parents=True)
    shapes = synthetic.SyntheticShapes(num_examples=8, image_size=40, seed=5)  # 40 px: resized and cropped to 32
    for i in range(8):
        Image.fromarray(np.round(shapes[i]["image"] * 255).astype(np.uint8)).save(images / f"{i}.png")
    output = tmp_path / "result.json"
    options = reproduce_command.Options(
        release="tokenizer_titok_l32_imagenet", checkpoint=hub_tokenizer, images=str(tmp_path / "val"),
        batch_size=8, output=str(output),
    )  # fmt: skip
    results = reproduce_command.run(None, options)
    assert results["num_images"] == 8 and np.isfinite(results["rfid_random_inception"])
    assert 0 < results["ssim"] < 1 and results["psnr"] > 0 and 0 < results["codebook_usage"] <= 1
    assert "| rfid | " in results["table"] and "| 2.21 |" in results["table"] and "not comparable" in results["table"]
    assert json.loads(output.read_text())["published"] == {"rfid": 2.21}
    assert "center crop" in results["protocol"]["transform"]


@pytest.fixture(scope="module")
def official_generator(hub_tokenizer, tmp_path_factory):
    """(the tiny generator with random weights in the official hub layout, its sampler settings, a reference)."""
    config = tiny_generator_config(hub_tokenizer)
    model = maskgit_from_config(config.model)
    ids, labels = jnp.zeros((1, model.num_tokens), jnp.int32), jnp.zeros((1,), jnp.int32)
    variables = jax.device_get({"params": nn.meta.unbox(model.init(jax.random.PRNGKey(4), ids, labels))["params"]})
    folder = tmp_path_factory.mktemp("generator")
    official = str(folder / "official")
    write_official_generator(model, variables, SamplingSettings.from_config(config.sampling), official)
    reference = str(folder / "ref.npz")
    fid.save_statistics(reference, np.zeros(2048), np.eye(2048))  # pytorch-fid's layout: gFID and IS only
    return official, config.sampling, reference


def test_evaluate_samples_and_scores_a_generator_checkpoint(hub_tokenizer, official_generator, tmp_path):
    official, sampling, reference = official_generator
    options = evaluate_command.Options(
        generator=official, tokenizer=hub_tokenizer, reference_statistics=reference, num_images=10, batch_size=8,
        output=str(tmp_path / "samples"),
    )  # fmt: skip
    results = evaluate_command.run(None, options)
    assert results["num_images"] == 10 and results["gfid_random_inception"] > 0
    assert results["protocol"]["sampler"]["guidance_scale"] == sampling.guidance_scale
    assert np.load(tmp_path / "samples" / "samples.npz")["arr_0"].shape == (10, 32, 32, 3)


def test_a_released_generator_samples_and_scores_against_the_reference(hub_tokenizer, official_generator, tmp_path):
    official, sampling, reference = official_generator
    options = reproduce_command.Options(
        release="generator_titok_l32_imagenet", checkpoint=official, tokenizer=hub_tokenizer, reference=reference,
        num_images=10, batch_size=8, output=str(tmp_path / "gen.json"),
    )  # fmt: skip
    results = reproduce_command.run(None, options)
    assert results["num_images"] == 10 and results["gfid_random_inception"] > 0
    assert "| gfid | " in results["table"] and "| 2.77 |" in results["table"] and "| 194.00 |" in results["table"]
    assert results["protocol"]["sampler"]["num_steps"] == sampling.num_steps
    samples = np.load(tmp_path / "gen_samples" / "samples.npz")
    np.testing.assert_array_equal(samples["labels"], np.arange(10))


def test_mistakes_are_named():
    with pytest.raises(ValueError, match="Unknown release 'titok_xl'"):
        reproduce.release("titok_xl")
    with pytest.raises(ValueError, match="needs --reference"):
        reproduce_command.run(None, reproduce_command.Options(release="generator_titok_b64_imagenet"))
    with pytest.raises(ValueError, match="--images=DIR"):
        reproduce.eval_data_config(256)
