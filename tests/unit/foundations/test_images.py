"""Readable grids: tiles upscaled pixel-exactly, one labelled row per class, every sample on some page."""

import numpy as np
import pytest
from PIL import Image

from titok_jax import images
from titok_jax.inference.generator import balanced_class_ids


def _samples(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _margin(page: np.ndarray, columns: int, tile: int) -> int:
    return page.shape[1] - columns * tile


def test_readable_grid_upscales_32px_tiles_to_128px_blocks_exactly():
    rows = _samples(6).reshape(2, 3, 32, 32, 3)
    grid = images.readable_grid(rows)
    assert grid.shape == (2 * 128, 3 * 128, 3) and grid.dtype == np.uint8
    # Every source pixel is a 4x4 block of itself: nearest, integer factor, nothing interpolated.
    tile = grid[128:256, 256:384]  # row 1, column 2
    np.testing.assert_array_equal(tile[::4, ::4], rows[1, 2])
    np.testing.assert_array_equal(tile, np.repeat(np.repeat(rows[1, 2], 4, axis=0), 4, axis=1))


def test_readable_grid_rounds_the_factor_up_and_never_shrinks():
    assert images.readable_grid(np.zeros((1, 2, 50, 50, 3), np.float32)).shape == (150, 300, 3)  # 3x: 150 >= 128
    assert images.readable_grid(np.zeros((1, 1, 256, 256, 3), np.uint8)).shape == (256, 256, 3)
    floats = np.full((1, 1, 32, 32, 3), 0.5, np.float32)
    assert np.all(images.readable_grid(floats) == 128)  # float [0, 1] -> uint8 like image_grid


def test_100_samples_over_10_classes_are_10_labelled_rows_of_10(tmp_path):
    samples = _samples(100)
    class_ids = balanced_class_ids(100, 10)
    rows = images.class_rows(samples, class_ids, class_names=[f"kind{i}" for i in range(10)])
    assert [row.label for row in rows] == [f"kind{i}" for i in range(10)]
    assert images.save_pages(images.labelled_pages(rows), str(tmp_path)) == ["grid.png"]
    page = np.asarray(Image.open(tmp_path / "grid.png"))  # read back what a person opens
    tile = 128
    margin = _margin(page, 10, tile)
    assert page.shape == (10 * tile, margin + 10 * tile, 3)
    assert 20 < margin < 200
    labels = page[:, :margin]
    assert np.any(labels != images.BACKGROUND)  # text was drawn
    for r in range(10):  # each row's margin holds ink: every row is labelled
        assert np.any(labels[r * tile : (r + 1) * tile] != images.BACKGROUND), r
    for index in (0, 9, 37, 99):  # image i of class i // 10 sits in row i // 10, column i % 10
        r, c = divmod(index, 10)
        crop = page[r * tile : (r + 1) * tile, margin + c * tile : margin + (c + 1) * tile]
        np.testing.assert_array_equal(crop, images.upscale(samples[index], 4))


def test_rows_are_labelled_with_ids_without_names_and_ids_past_the_names():
    rows = images.class_rows(_samples(4), np.array([0, 1, 2, 12]), class_names=["circle", "square"])
    assert [row.label for row in rows] == ["circle", "square", "2", "12"]
    assert [row.label for row in images.class_rows(_samples(2), np.array([3, 5]))] == ["3", "5"]


def test_300_samples_over_3_classes_wrap_each_class_and_page(tmp_path):
    samples = _samples(300)
    class_ids = balanced_class_ids(300, 3)
    rows = images.class_rows(samples, class_ids, class_names=["a", "b", "c"])
    # 100 per class in rows of 16: 6 full rows + one of 4, each labelled with its class.
    assert len(rows) == 21
    assert [len(row.images) for row in rows[:7]] == [16] * 6 + [4]
    assert [row.label for row in rows] == ["a"] * 7 + ["b"] * 7 + ["c"] * 7
    (tmp_path / "grid_5.png").write_bytes(b"stale page of a larger earlier run")
    names = images.save_pages(images.labelled_pages(rows), str(tmp_path))
    assert names == ["grid.png", "grid_1.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # the stale page is gone
    first, second = (np.asarray(Image.open(tmp_path / name)) for name in names)
    margin = _margin(first, 16, 128)
    assert first.shape == (16 * 128, margin + 16 * 128, 3)
    assert second.shape == (5 * 128, first.shape[1], 3)  # same width: pages line up
    # All 300 shown: the last sample (class c, 100th) is tile 3 of the second page's last row.
    last = second[4 * 128 : 5 * 128, margin + 3 * 128 : margin + 4 * 128]
    np.testing.assert_array_equal(last, images.upscale(samples[299], 4))
    assert np.all(second[4 * 128 :, margin + 4 * 128 :] == images.BACKGROUND)  # the short row ends in white


def test_mismatched_ids_and_empty_grids_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 class ids"):
        images.class_rows(_samples(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="at least one row"):
        next(images.labelled_pages([]))
