"""The pieces of a fine-tuning start: table resizes and the matching of a source's parameters to a model's."""

import jax
import numpy as np
import pytest

from titok_jax.models import resize
from titok_jax.recipes import init_from


def test_grid_positions_keep_the_class_row_and_interpolate_the_grid():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1 + 16, 8)).astype(np.float32)  # 4 x 4 grid
    assert resize.grid_positions(table, np.zeros_like(table)) is not None
    np.testing.assert_array_equal(resize.grid_positions(table, np.zeros_like(table)), table)  # same size: identity
    # A grid that is linear in (row, column) stays linear when interpolated to 16 x 16 (away from the border,
    # where the cubic kernel reads clamped rows).
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    linear = np.stack([rows, cols], -1).reshape(64, 2).astype(np.float32)
    table = np.concatenate([np.full((1, 2), 7.0, np.float32), linear])
    moved = resize.grid_positions(table, np.zeros((1 + 256, 2), np.float32))
    assert moved.shape == (257, 2)
    np.testing.assert_array_equal(moved[0], [7.0, 7.0])
    grid = moved[1:].reshape(16, 16, 2)
    np.testing.assert_allclose(np.diff(grid[4:12, 4:12, 0], axis=0), 0.5, atol=1e-5)  # half a source row per row
    np.testing.assert_allclose(np.diff(grid[4:12, 4:12, 1], axis=1), 0.5, atol=1e-5)
    np.testing.assert_allclose(grid[..., 0].mean(), linear[:, 0].mean(), atol=1e-5)
    with pytest.raises(ValueError, match="1 \\+ a square number"):
        resize.grid_positions(table, np.zeros((1 + 15, 2), np.float32))


def test_leading_rows_cut_or_grow_with_fresh_rows():
    loaded, fresh = np.arange(12.0).reshape(4, 3), -np.ones((6, 3))
    grown = resize.leading_rows(loaded, fresh)
    np.testing.assert_array_equal(grown[:4], loaded)
    np.testing.assert_array_equal(grown[4:], fresh[4:])
    np.testing.assert_array_equal(resize.leading_rows(loaded, fresh[:2]), loaded[:2])


def test_class_rows_keep_codes_mask_known_classes_and_the_null_class():
    codebook, width = 5, 2
    loaded = np.arange((codebook + 1 + 3 + 1) * width, dtype=np.float32).reshape(-1, width)  # 3 classes
    fresh = -np.ones((codebook + 1 + 5 + 1, width), np.float32)  # 5 classes
    moved = resize.class_rows(loaded, fresh, codebook)
    np.testing.assert_array_equal(moved[: codebook + 4], loaded[: codebook + 4])
    np.testing.assert_array_equal(moved[codebook + 4 : codebook + 6], fresh[codebook + 4 : codebook + 6])
    np.testing.assert_array_equal(moved[-1], loaded[-1])
    fewer = resize.class_rows(loaded, fresh[: codebook + 1 + 2 + 1], codebook)
    np.testing.assert_array_equal(fewer, np.concatenate([loaded[: codebook + 3], loaded[-1:]]))


def _target(**shapes):
    return {name: jax.ShapeDtypeStruct(shape, np.float32) for name, shape in shapes.items()}


def test_plan_sorts_every_parameter_and_names_every_misfit():
    target = _target(**{"a/w": (2, 3), "b/w": (4,), "latent_tokens": (6, 3), "c/new": (2,)})
    source = init_from.Loaded({"a/w": np.ones((2, 3)), "b/w": np.ones((5,)), "latent_tokens": np.ones((4, 3)),
                               "old/w": np.ones(1)}, "'src'")  # fmt: skip
    with pytest.raises(ValueError) as raised:
        init_from.plan(target, source)
    message = str(raised.value)
    for problem in ("b/w: source (5,), model (4,)", "latent_tokens: source (4, 3), model (6, 3)",
                    "c/new: missing from the source, model (2,)", "old/w: only in the source (1,)"):  # fmt: skip
        assert problem in message
    assert "in 4 parameter(s)" in message

    rules = {"latent_tokens": init_from.Resize(("latent_tokens",), resize.leading_rows)}
    transfer = init_from.plan(target, source, skip=("b", "c", "old"), rules=rules)
    assert transfer.how == {"a/w": "loaded", "b/w": "fresh", "latent_tokens": "resized", "c/new": "fresh"}
    assert "1 parameters loaded, 1 resized, 0 filled, 2 left at their fresh init" in transfer.report()


def test_plan_fills_only_what_the_source_lacks_and_reads_the_fill_only_then():
    target = _target(**{"encoder/w": (2,), "pixel_decoder/w": (3,)})
    reads = []

    def fill():
        reads.append(1)
        return {"pixel_decoder/w": np.full((3,), 5.0)}

    stage1 = init_from.Loaded({"encoder/w": np.ones(2)}, "'stage1'")
    assert (
        init_from.plan(target, stage1, fill=fill, fill_patterns=("pixel_decoder",)).how["pixel_decoder/w"] == "filled"
    )
    stage2 = init_from.Loaded({"encoder/w": np.ones(2), "pixel_decoder/w": np.ones(3)}, "'stage2'")
    assert (
        init_from.plan(target, stage2, fill=fill, fill_patterns=("pixel_decoder",)).how["pixel_decoder/w"] == "loaded"
    )
    assert reads == [1]


def test_fine_tuning_fields_are_checked_before_anything_is_read():
    from train_helpers import tiny_config

    from titok_jax import recipes

    for overrides, message in (
        (
            {"init_from_resize": ("grid_positions", "classes")},
            r"unknown rules \['classes'\]; this recipe has: grid_pos",
        ),
        ({"frozen": ("",)}, r"config.frozen must be a tuple of non-empty strings"),
        ({"frozen": ("quantize",)}, r"model.clustering_vq=True would still move its dead codes"),
        ({"trainable": ("decoder",)}, r"model.clustering_vq=True would still move its dead codes"),
    ):
        with pytest.raises(ValueError, match=message):
            recipes.validate(tiny_config("single_stage:tiny_vq", **overrides))
    recipes.validate(tiny_config("single_stage:tiny_vq", trainable=("decoder",), **{"model.clustering_vq": False}))


@pytest.mark.parametrize(
    "variant", ["vq", "vae", "decoder", "l64_512", "b128_512", "generator_classes", "tiny_vq", "tiny_64px"]
)
def test_every_finetune_starting_point_is_a_valid_config(variant, tmp_path):
    from helpers import EXPERIMENTS
    from PIL import Image

    from titok_jax import configs, recipes

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "photos" / "a.png")
    extra = "num_classes=20" if variant == "generator_classes" else f"root={tmp_path / 'photos'}"
    config = configs.load_config(f"{EXPERIMENTS / 'finetune.py'}:{variant},init_from={tmp_path / 'source'},{extra}")
    recipes.validate(config)
    assert config.init_from == str(tmp_path / "source") and config.optimizer.warmup_steps <= 1_000
    if variant in ("l64_512", "b128_512"):
        assert config.model.image_size == 512 and config.init_from_resize == ("grid_positions", "latent_tokens")
    if variant == "generator_classes":
        assert config.model.num_classes == 20 and config.init_from_resize == ("class_table",)
