"""Bad input gets an error that names the problem and the fix."""

import jax
import jax.numpy as jnp
import pytest
from helpers import GENERATOR, SINGLE_STAGE, TWO_STAGE, abstract_params, model_for

from titok_jax import configs, recipes
from titok_jax.models.titok import titok_from_config
from titok_jax.recipes import maskgit


@pytest.fixture(scope="module")
def tiny():
    model = model_for("titok_single_stage.py:tiny_vq")
    return model, abstract_params(model)


def _encode(model, params, images):
    return jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode), params, images)


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((2, 64, 64, 3), jnp.float32, r"shape \(batch, 32, 32, 3\) .*got shape \(2, 64, 64, 3\)"),
        ((2, 32, 32, 1), jnp.float32, r"shape \(batch, 32, 32, 3\) .*got shape \(2, 32, 32, 1\)"),
        ((2, 3, 32, 32), jnp.float32, r"got shape \(2, 3, 32, 32\)\. The input looks channels-first"),
        ((32, 32, 3), jnp.float32, r"got shape \(32, 32, 3\)"),
        ((2, 32, 32, 3), jnp.uint8, r"got dtype uint8\. Convert uint8 pixels with images.astype\(jnp.float32\) / 255"),
    ],
)
def test_encode_rejects_bad_images(tiny, shape, dtype, message):
    model, params = tiny
    with pytest.raises(ValueError, match=message):
        _encode(model, params, jax.ShapeDtypeStruct(shape, dtype))


def test_decode_and_decode_tokens_reject_bad_shapes(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"latents of shape \(batch, 16, 8\); got \(2, 16, 5\)"):
        jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), params, jnp.zeros((2, 16, 5)))
    with pytest.raises(ValueError, match=r"integer token ids of shape \(batch, 16\); got float32"):
        jax.eval_shape(lambda p, t: model.apply(p, t, method=model.decode_tokens), params, jnp.zeros((2, 16)))


@pytest.mark.parametrize("path", [TWO_STAGE, SINGLE_STAGE])
def test_unknown_variant_lists_the_valid_ones(path):
    with pytest.raises(ValueError, match=r"Unknown variant 'x99'; valid variants: .*tiny"):
        configs.load_config(f"{path}:x99")


def test_unknown_config_arg_and_bad_stage():
    with pytest.raises(ValueError, match=r"Unknown config arg 'stag'.*valid args: stage, variant"):
        configs.load_config(f"{TWO_STAGE}:s128,stag=2")
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        configs.load_config(f"{TWO_STAGE}:s128,stage=3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        configs.load_config("experiments/nope.py:tiny")


def test_model_field_errors():
    fields = dict(configs.load_config(f"{SINGLE_STAGE}:tiny_vq").model)
    with pytest.raises(
        ValueError, match=r"Unknown TiTok model field\(s\) \['num_tokens'\]\. Valid fields: .*num_latent_tokens"
    ):
        titok_from_config(fields, num_tokens=8)
    with pytest.raises(ValueError, match="image_size=30 is not divisible by encoder_patch_size=4"):
        titok_from_config(fields, image_size=30)
    with pytest.raises(ValueError, match="encoder_width=64 is not divisible by encoder_num_heads=3"):
        titok_from_config(fields, encoder_num_heads=3)
    with pytest.raises(ValueError, match=r"quantize_mode='rvq' is not one of \('vq', 'vae', 'fsq', 'lfq', 'bsq'\)"):
        titok_from_config(fields, quantize_mode="rvq")  # (fsq is a quantizer now)
    with pytest.raises(ValueError, match="with_pixel_decoder needs the two-stage VQ form"):
        titok_from_config(fields, with_pixel_decoder=True)
    with pytest.raises(ValueError, match=r"positional_init='fourier' is not one of \('normal', 'sincos'\)"):
        titok_from_config(fields, positional_init="fourier")
    with pytest.raises(ValueError, match=r"pixel_conv_init='zeros' is not one of \('truncated_normal', 'identity'\)"):
        titok_from_config(fields, pixel_conv_init="zeros")
    with pytest.raises(
        ValueError, match="positional_init='sincos' needs encoder_width and decoder_width divisible by 4"
    ):
        titok_from_config(fields, encoder_width=66, encoder_num_heads=2)


def test_config_validation():
    config = configs.load_config(f"{TWO_STAGE}:tiny,stage=2")
    recipes.validate(config)
    bad = config.copy_and_resolve_references()
    bad.teacher.channel_multipliers = (1, 2)
    with pytest.raises(ValueError, match=r"teacher VQGAN downsamples by 2 but model\.decoder_patch_size=4"):
        recipes.validate(bad)
    bad = config.copy_and_resolve_references()
    bad.mesh.fsdp = 0
    with pytest.raises(ValueError, match=r"config.mesh.fsdp must be a positive int or -1"):
        recipes.validate(bad)
    bad = config.copy_and_resolve_references()
    bad.model.pixel_decoder_filters = 64
    with pytest.raises(ValueError, match=r"pixel decoder fields .* must equal the teacher"):
        recipes.validate(bad)


def test_generator_on_images_refuses_labels_beyond_its_classes(tmp_path):
    # Label 11 with model.num_classes=10 would silently train the null class (10) or fall off the vocabulary.
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 11\n")  # never decoded: the check reads the listing only
    config = configs.load_config(f"{GENERATOR}:tiny")
    config.tokens_dir = ""
    config.data.update(source="image_list", list_file=str(tmp_path / "list.txt"))
    with pytest.raises(
        ValueError, match=r"data has 12 classes \(labels 0\.\.11\) but config\.model\.num_classes=10: set"
    ):
        maskgit.make_data(config)
    (tmp_path / "list.txt").write_text("a.png\nb.png\n")  # without labels: one class, label 0
    assert maskgit.make_data(config)[0].num_classes == 1


@pytest.mark.parametrize(
    "spec",
    [f"{TWO_STAGE}:{v},stage={s}" for v in ("l32", "b64", "s128", "l64_512", "b128_512", "tiny") for s in (1, 2)]
    + [
        f"{SINGLE_STAGE}:{v}"
        for v in ("bl64_vq", "bl128_vq", "sl256_vq", "ll32_vae", "bl64_vae", "bl128_vae", "tiny_vq", "tiny_vae")
    ],
)
def test_every_shipped_config_validates(spec):
    recipes.validate(configs.load_config(spec))
