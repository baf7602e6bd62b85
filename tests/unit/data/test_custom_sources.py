"""Custom data: image folders without classes (data.labels) and image list files (data.source='image_list')."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from titok_jax.data import pipeline, transforms
from titok_jax.data.image_list import ImageList
from titok_jax.data.sources import ImageFolder


def _config(**overrides):
    config = pipeline.default_data_config()
    config.read_threads = 2  # the test machine has 2 cores
    config.image_size = 8
    for key, value in overrides.items():
        config[key] = value
    return config


def _png(path, colour, size=(8, 8), mode="RGB"):
    """An 8x8 lossless image of one colour: its first pixel tells which file a batch row came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _pixels(batch, keep=None) -> list[tuple[int, ...]]:
    rows = np.rint(batch["image"][:, 0, 0] * 255).astype(int)
    keep = np.ones(len(rows), bool) if keep is None else keep
    return [tuple(row) for row, k in zip(rows.tolist(), keep, strict=True) if k]


def _eval_rows(config, batch_size=4):
    """(first pixel, label) of every real image of one ordered eval pass, and the pass's skip count."""
    iterator = pipeline.make_eval_iterator(config, batch_size, process_index=0, process_count=1)
    rows = []
    for batch in iterator:
        rows += list(zip(_pixels(batch, batch["mask"]), batch["label"][batch["mask"]].tolist(), strict=True))
    return rows, iterator


# ---------------------------------------------------------------- image folders without classes


def test_loose_images_are_one_class_with_label_0(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        _png(root / f"x{i}.png", (10 * i, 100, 200))
    (root / "notes.txt").write_bytes(b"not an image")
    _png(root / ".hidden.png", (1, 2, 3))
    source = ImageFolder(root)
    assert source.layout == "flat" and source.num_classes == 1 and source.class_names == ()
    assert [os.path.basename(r["path"]) for r in source] == ["x0.png", "x1.png", "x2.png"]
    assert [r["label"] for r in source] == [0, 0, 0]
    assert repr(source).startswith("ImageFolder(num_images=3, num_classes=1, listing_sha1=")
    assert str(tmp_path) not in repr(source)

    # Through the real pipeline: eval keeps label 0, and the train iterator says it has one class.
    rows, iterator = _eval_rows(_config(source="image_folder", root=str(root), eval_root=str(root)))
    assert rows == [((0, 100, 200), 0), ((10, 100, 200), 0), ((20, 100, 200), 0)]
    assert iterator.num_classes == 1 and iterator.num_skipped == 0
    train = pipeline.make_train_iterator(_config(source="image_folder", root=str(root)), 3, seed=0)
    batch = next(train)
    assert sorted(_pixels(batch)) == [(0, 100, 200), (10, 100, 200), (20, 100, 200)]
    assert batch["label"].tolist() == [0, 0, 0] and train.num_classes == 1


def _mixed_folder(root):
    """root/top.png loose, root/x/deep/b.png and root/z/c.png in subfolders."""
    _png(root / "top.png", (1, 0, 0))
    _png(root / "x" / "deep" / "b.png", (2, 0, 0))
    _png(root / "z" / "c.png", (3, 0, 0))
    return root


def test_labels_none_reads_every_image_below_the_root_as_label_0(tmp_path):
    root = _mixed_folder(tmp_path / "mixed")
    source = ImageFolder(root, labels="none")
    assert [os.path.relpath(r["path"], root) for r in source] == ["top.png", "x/deep/b.png", "z/c.png"]
    assert [r["label"] for r in source] == [0, 0, 0] and source.num_classes == 1
    # "folders" on the same root: the subfolders are the classes and the loose file is left out.
    classes = ImageFolder(root, labels="folders")
    assert classes.class_names == ("x", "z") and classes.num_classes == 2
    assert [(os.path.relpath(r["path"], root), r["label"]) for r in classes] == [("x/deep/b.png", 0), ("z/c.png", 1)]
    # A root of class folders only: "none" still ignores the folders, "auto" takes them as classes.
    (root / "top.png").unlink()
    assert [r["label"] for r in ImageFolder(root, labels="none")] == [0, 0]
    assert ImageFolder(root).class_names == ("x", "z")


def test_loose_images_next_to_subfolders_are_ambiguous_under_auto(tmp_path):
    root = _mixed_folder(tmp_path / "mixed")
    with pytest.raises(
        ValueError, match=r"holds both images \(1, e\.g\. 'top\.png'\) and subfolders \(x, z\)"
    ) as error:
        ImageFolder(root)
    assert "data.labels='folders'" in str(error.value) and "data.labels='none'" in str(error.value)
    assert "\n" not in str(error.value)
    # The pipeline refuses the same way, before reading anything.
    with pytest.raises(ValueError, match="holds both images"):
        pipeline.make_train_iterator(_config(source="image_folder", root=str(root)), 2, seed=0)


def test_labels_folders_refuses_a_flat_folder_and_names_the_fix(tmp_path):
    root = tmp_path / "flat"
    _png(root / "a.png", (0, 0, 0))
    with pytest.raises(ValueError, match=r"no class subfolders.*data\.labels='auto'.*or 'none'"):
        ImageFolder(root, labels="folders")
    with pytest.raises(ValueError, match=r"Unknown labels='sometimes' \(data\.labels\); valid: auto, folders, none"):
        ImageFolder(root, labels="sometimes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images directly in it"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="has no images anywhere below it"):
        ImageFolder(tmp_path / "empty", labels="none")


def test_eval_root_is_labelled_like_the_train_root(tmp_path):
    # Classes: the eval folder holding only "b" keeps train's index for it.
    for name in ("a", "b", "c"):
        _png(tmp_path / "train" / name / "0.png", (0, 0, 0))
    _png(tmp_path / "val" / "b" / "v.png", (5, 6, 7))
    config = _config(source="image_folder", root=str(tmp_path / "train"), eval_root=str(tmp_path / "val"))
    rows, iterator = _eval_rows(config)
    assert rows == [((5, 6, 7), 1)] and iterator.num_classes == 3

    # No classes: loose eval images are label 0 ...
    _png(tmp_path / "flat_train" / "t.png", (0, 0, 0))
    _png(tmp_path / "flat_val" / "v0.png", (9, 9, 9))
    _png(tmp_path / "flat_val" / "v1.png", (8, 8, 8))
    config = _config(source="image_folder", root=str(tmp_path / "flat_train"), eval_root=str(tmp_path / "flat_val"))
    assert _eval_rows(config)[0] == [((9, 9, 9), 0), ((8, 8, 8), 0)]
    # ... an eval root of class folders is refused (its labels would not be train's single 0) ...
    config.eval_root = str(tmp_path / "val")
    with pytest.raises(ValueError, match=r"data\.eval_root=.* has subfolders but data\.root=.*data\.labels='none'"):
        pipeline.make_eval_iterator(config, 2)
    # ... unless labels="none" reads it recursively, label 0.
    config.labels = "none"
    assert _eval_rows(config)[0] == [((5, 6, 7), 0)]


# ---------------------------------------------------------------- image lists


@pytest.fixture
def listed(tmp_path):
    """A list of good, odd, broken and missing images; returns (list file, {first pixel: label} of the usable)."""
    data = tmp_path / "data"
    _png(data / "a.png", (10, 100, 200))
    _png(data / "sub" / "b.png", (20, 100, 200))
    elsewhere = _png(tmp_path / "elsewhere" / "c.png", (30, 100, 200))
    _png(data / "gray.png", 77, mode="L")  # decodes to RGB (77, 77, 77)
    _png(data / "rgba.png", (0, 0, 255, 255), mode="RGBA")  # opaque: composited to (0, 0, 255)
    _png(data / "tiny.png", (1, 1, 1), size=(4, 4))  # below min_image_size=8: skipped
    (data / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (5, 5, 5)).save(good, "PNG")
    (data / "truncated.png").write_bytes(good.getvalue()[:40])
    list_file = data / "train.txt"
    list_file.write_text(
        "# path label\n"
        "a.png 3\n"
        "\n"
        "sub/b.png,1\n"
        f"{elsewhere}\t0\n"
        "   gray.png    2   \n"
        "rgba.png, 6\n"
        "  # an indented comment\n"
        "tiny.png 5\n"
        "missing.png 4\n"
        "garbage.jpg 7\n"
        "truncated.png 8\n"
    )
    usable = {(10, 100, 200): 3, (20, 100, 200): 1, (30, 100, 200): 0, (77, 77, 77): 2, (0, 0, 255): 6}
    return list_file, usable


def test_image_list_reads_relative_and_absolute_paths_with_labels(listed, tmp_path):
    list_file, _ = listed
    source = ImageList(list_file)
    data = tmp_path / "data"
    assert [r["path"] for r in source] == [
        str(data / "a.png"),
        str(data / "sub" / "b.png"),
        str(tmp_path / "elsewhere" / "c.png"),
        *(str(data / name) for name in ("gray.png", "rgba.png", "tiny.png", "missing.png", "garbage.jpg")),
        str(data / "truncated.png"),
    ]
    assert [r["label"] for r in source] == [3, 1, 0, 2, 6, 5, 4, 7, 8]
    assert source.labelled and source.num_classes == 9  # listing never opens a file: missing.png is a record


def test_image_list_skips_and_counts_what_cannot_be_used(listed):
    list_file, usable = listed
    config = _config(source="image_list", list_file=str(list_file), eval_list_file=str(list_file))
    transforms.SKIPPED.reset()
    rows, iterator = _eval_rows(config)  # 9 entries, padded to 12: 3 ordered batches
    assert rows == list(usable.items())
    assert iterator.num_skipped == 4 and iterator.num_classes == 9
    assert transforms.SKIPPED.counts() == {"too small": 1, "missing": 1, "undecodable": 2}

    # Train: batches stay full of the usable images with their own labels; every index handed out is either
    # in a batch or counted as skipped.
    train = pipeline.make_train_iterator(config, 2, seed=1)
    for _ in range(6):
        batch = next(train)
        assert [usable[p] for p in _pixels(batch)] == batch["label"].tolist()
    consumed = json.loads(train.get_state())["last_seen_indices"]["0"] + 1
    assert consumed == 6 * 2 + train.num_skipped and train.num_skipped >= 4


def test_image_list_without_labels_is_one_class(tmp_path):
    _png(tmp_path / "my photos" / "cat 1.png", (1, 2, 3))  # spaces in a path stay part of it
    _png(tmp_path / "dog,2.png", (4, 5, 6))
    (tmp_path / "list.txt").write_text("my photos/cat 1.png\n\n# comment 7\ndog,2.png\n")
    source = ImageList(tmp_path / "list.txt")
    assert [os.path.relpath(r["path"], tmp_path) for r in source] == ["my photos/cat 1.png", "dog,2.png"]
    assert [r["label"] for r in source] == [0, 0] and not source.labelled and source.num_classes == 1
    config = _config(source="image_list", list_file=str(tmp_path / "list.txt"))
    config.eval_list_file = config.list_file
    assert _eval_rows(config)[0] == [((1, 2, 3), 0), ((4, 5, 6), 0)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("# header\na.png 1\nb.png 2\n\nc.png\n", r"line 5 has no label but line 2 has one: label every line or none"),
        ("a.png\nb.png 3\n", r"line 2 has a label but line 1 has none"),
        ("a.png 1\nb.png -1\n", r"line 2: label '-1' is not an integer in \[0, 2147483647\]"),
        ("a.png 2.5\n", r"line 1: label '2\.5' is not an integer"),
        ("a.png 1\nb.png cat\n", r"line 2 has no label but line 1 has one"),
        ("a.png 99999999999\n", r"line 1: label '99999999999' is not an integer in \[0, 2147483647\]"),
        (", 4\n", r"line 1: no image path before the label 4"),
        ("# only comments\n\n   \n", r"holds no image paths \(only blank lines and '#' comments\)"),
        ("", r"holds no image paths"),
    ],
)
def test_image_list_errors_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        ImageList(tmp_path / "bad.txt")
    assert str(tmp_path / "bad.txt") in str(error.value) and "\n" not in str(error.value)


def test_same_listing_gives_the_same_repr_wherever_it_lives(listed, tmp_path):
    list_file, _ = listed
    moved = tmp_path / "moved"
    shutil.copytree(list_file.parent, moved)
    first, again, copy = ImageList(list_file), ImageList(list_file), ImageList(moved / "train.txt")
    assert repr(first) == repr(again) == repr(copy)
    assert repr(first).startswith("ImageList(num_images=9, num_classes=9, listing_sha1=")
    assert str(tmp_path) not in repr(first)
    relabelled = moved / "relabelled.txt"
    relabelled.write_text(list_file.read_text().replace("a.png 3", "a.png 2"))  # same paths, one label changed
    assert repr(ImageList(relabelled)) != repr(first)

    folder = _mixed_folder(tmp_path / "folder")
    shutil.copytree(folder, tmp_path / "folder_copy")
    assert repr(ImageFolder(folder, labels="none")) == repr(ImageFolder(tmp_path / "folder_copy", labels="none"))


def test_data_config_checks_the_new_fields(tmp_path):
    (tmp_path / "list.txt").write_text("a.png\n")
    cases = [
        (dict(labels="sometimes"), ValueError, r"Unknown data\.labels 'sometimes'; valid: auto, folders, none"),
        (dict(source="image_list"), ValueError, r"needs data\.list_file"),
        (
            dict(source="image_list", list_file=str(tmp_path / "no.txt")),
            FileNotFoundError,
            r"data\.list_file=.*no\.txt",
        ),
        (
            dict(source="image_list", list_file=str(tmp_path / "list.txt"), eval_list_file=str(tmp_path)),
            FileNotFoundError,
            r"data\.eval_list_file=.* is not a file",
        ),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            pipeline.validate_data_config(_config(**overrides))
    with pytest.raises(ValueError, match=r"needs data\.eval_list_file"):
        pipeline.make_eval_iterator(_config(source="image_list", list_file=str(tmp_path / "list.txt")), 2)
    # The other sources take the new fields' defaults unchanged.
    config = pipeline.validate_data_config(_config())
    assert (config.source, config.labels, config.list_file, config.eval_list_file) == ("synthetic", "auto", None, None)
    assert pipeline.make_train_iterator(_config(image_size=8), 2, seed=0).num_classes == 10
