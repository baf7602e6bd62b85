"""The sample task's files: samples.npz with every sample, and labelled grid pages that show them all."""

import os

import ml_collections
import numpy as np
from PIL import Image

from titok_jax import images
from titok_jax.data.pipeline import class_names, default_data_config
from titok_jax.data.synthetic import SHAPE_KINDS
from titok_jax.inference.samples import write_samples


class _ClassColourGenerator:
    """Draws class c as a flat 32 px image of grey level 20 * c + 10, so a grid tile tells its class."""

    num_classes = 10

    def __init__(self):
        self.metadata = {"step": 7}

    def generate(self, class_ids, seed=0, batch_size=64, progress=False, num_tokens=None):
        levels = (20 * np.asarray(class_ids) + 10).astype(np.uint8)
        samples = np.broadcast_to(levels[:, None, None, None], (len(class_ids), 32, 32, 3)).copy()
        return samples, np.zeros((len(class_ids), 4), np.int32)


def test_every_sample_is_shown_one_labelled_row_per_class(tmp_path):
    names = class_names(default_data_config())  # the synthetic set: shape kinds
    summary = write_samples(_ClassColourGenerator(), 100, str(tmp_path), class_names=names)
    assert summary["grids"] == ["grid.png"] and summary["checkpoint_step"] == 7
    page = np.asarray(Image.open(tmp_path / "grid.png"))
    margin = page.shape[1] - 10 * 128
    assert page.shape == (10 * 128, margin + 10 * 128, 3)
    write_samples(_ClassColourGenerator(), 100, str(tmp_path / "ids"))  # labelled "0".."9" without names
    margin_of_ids = np.asarray(Image.open(tmp_path / "ids" / "grid.png")).shape[1] - 10 * 128
    assert margin > 3 * margin_of_ids  # room for "horizontal_stripes", not just "9"
    for row in range(10):
        tiles = page[row * 128 : (row + 1) * 128, margin:]
        assert np.all(tiles == 20 * row + 10), row  # row r holds only class r's samples
        assert np.any(page[row * 128 : (row + 1) * 128, :margin] != images.BACKGROUND), row


def test_many_samples_page_and_the_summary_names_the_pages(tmp_path):
    summary = write_samples(_ClassColourGenerator(), 400, str(tmp_path))  # 40 per class: 3 rows each, 30 rows
    assert summary["grids"] == ["grid.png", "grid_1.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "grid_1.png", "samples.npz"]
    second = np.asarray(Image.open(tmp_path / "grid_1.png"))
    assert second.shape[0] == 14 * 128  # 30 rows = 16 + 14
    assert np.load(tmp_path / "samples.npz")["arr_0"].shape == (400, 32, 32, 3)


def test_class_names_of_each_source(tmp_path):
    assert class_names(default_data_config()) == SHAPE_KINDS
    assert class_names(ml_collections.ConfigDict(dict(source="synthetic", num_classes=3))) == SHAPE_KINDS[:3]
    for name in ("dog", "cat"):
        (tmp_path / name).mkdir()
    folder = ml_collections.ConfigDict(dict(source="image_folder", root=str(tmp_path), labels="auto"))
    assert class_names(folder) == ("cat", "dog")
    folder.labels = "none"
    assert class_names(folder) is None
    gone = ml_collections.ConfigDict(dict(source="image_folder", root=str(tmp_path / "moved"), labels="auto"))
    assert class_names(gone) is None  # sampling long after training: ids then
    assert class_names(ml_collections.ConfigDict(dict(source="tfds", name="imagenet2012"))) is None


def test_a_large_sample_set_caps_its_grid_pages(tmp_path):
    summary = write_samples(_ClassColourGenerator(), 400, str(tmp_path), max_grid_pages=1)
    assert (
        summary["grids"] == ["grid.png"] and summary["grid_rows"] == "16 of 30"
    )  # 40 per class wrap onto 3 rows of 16
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "samples.npz"]
