"""Data pipeline: synthetic shapes, robust decoding, transforms, TFDS array_record, sharding, resumption, eval padding."""

import io
import json
import os
import struct
import sys
import time
import zlib

import grain
import numpy as np
import pytest
from PIL import Image

from titok_jax.data import pipeline, transforms
from titok_jax.data.device_prefetch import DevicePrefetch
from titok_jax.data.sources import ImageFolder, image_files, tfds_source
from titok_jax.data.synthetic import SHAPE_KINDS, SyntheticShapes, centered_templates, nearest_template_labels


def _config(**overrides):
    config = pipeline.default_data_config()
    config.read_threads = 2  # the test machine has 2 cores
    for key, value in overrides.items():
        config[key] = value
    return config


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_rgb16(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    height, width, _ = array.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_index():
    a, b, other = SyntheticShapes(50, 32), SyntheticShapes(50, 32), SyntheticShapes(50, 32, seed=1)
    for i in (0, 7, 49):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        assert a[i]["label"] == b[i]["label"] == i % 10
        assert not np.array_equal(a[i]["image"], other[i]["image"])
    record = a[3]
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    assert record["label"].dtype == np.int32
    assert not np.array_equal(a[0]["image"], a[10]["image"])  # same class, different drawing
    with pytest.raises(IndexError):
        a[50]


def test_synthetic_classes_are_balanced_and_images_varied():
    source = SyntheticShapes(200, 32, num_classes=len(SHAPE_KINDS))
    labels = [int(source[i]["label"]) for i in range(len(source))]
    assert np.bincount(labels).tolist() == [20] * len(SHAPE_KINDS)
    images = np.stack([source[i]["image"] for i in range(40)]).astype(np.float32)
    assert images.std(axis=(1, 2, 3)).min() > 5  # every image has a visible shape on its background
    assert len({img.tobytes() for img in images.astype(np.uint8)}) == 40
    assert SyntheticShapes(10, 32, num_classes=3)[5]["label"] == 2
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(10, 32, num_classes=len(SHAPE_KINDS) + 1)


def test_centered_variation_fixes_each_class_geometry_and_varies_only_colours():
    source = SyntheticShapes(40, 16, variation="centered", seed=2)
    masks = centered_templates(16)
    for i in range(40):
        image, label = source[i]["image"].astype(np.float64), int(source[i]["label"])
        # Two colours: every pixel is background + (foreground - background) * the class mask (to rounding).
        design = np.stack([np.ones(16 * 16), masks[label].ravel()], axis=1)
        fit, *_ = np.linalg.lstsq(design, image.reshape(-1, 3), rcond=None)
        assert np.abs(design @ fit - image.reshape(-1, 3)).max() <= 1.0
        assert np.linalg.norm(fit[1]) >= 85  # the shape's contrast (at least _MIN_CONTRAST, less rounding)
    assert not np.array_equal(source[0]["image"], source[10]["image"])  # same class, other colours
    assert "variation='centered'" in repr(source)  # grain's restore check tells the variations apart
    with pytest.raises(ValueError, match="variation must be one of"):
        SyntheticShapes(4, 16, variation="jittered")


def test_nearest_template_judges_shape_not_colour():
    real = SyntheticShapes(100, 32, variation="centered", seed=5)
    images = np.stack([real[i]["image"] for i in range(100)]).astype(np.float32) / 255
    labels = np.arange(100) % 10
    np.testing.assert_array_equal(nearest_template_labels(images), labels)
    np.testing.assert_array_equal(nearest_template_labels(images[:, :, ::-1]), labels)  # mirrored views count
    # A decoder that renders only the colours: each image's flat mean colour (+ a little noise). Its
    # labels come out as one or two kinds, not the true ones.
    flat = images.mean(axis=(1, 2), keepdims=True) + np.random.default_rng(0).normal(0, 0.01, images.shape)
    assert np.mean(nearest_template_labels(flat) == labels) < 0.3
    with pytest.raises(ValueError, match=r"square RGB images \(N, S, S, 3\), got shape \(2, 32, 16, 3\)"):
        nearest_template_labels(np.zeros((2, 32, 16, 3)))


def test_synthetic_is_fast():
    source = SyntheticShapes(1000, 32)
    start = time.perf_counter()
    for i in range(500):
        source[i]
    rate = 500 / (time.perf_counter() - start)
    assert rate > 1000, f"{rate:.0f} images/s"


# ---------------------------------------------------------------- decoding


@pytest.fixture
def image_folder(tmp_path):
    """root/<class>/... with every awkward kind of image; returns (root, {relative path: expected outcome})."""
    root = tmp_path / "images"
    gradient = np.tile(np.arange(0, 240, 10, dtype=np.uint8)[None, :, None], (16, 1, 3))  # 16 x 24
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 8:] = (0, 255, 0, 0)  # fully transparent green: must come out white
    palette = np.zeros((16, 16), np.uint8)
    palette[:, 8:] = 1
    palette_image = Image.fromarray(palette, "P")
    palette_image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    gray16 = np.full((16, 16), 65535, np.uint16)
    gray16[:, :8] = 257 * 100
    good_jpeg = _encode(Image.fromarray(np.full((32, 32, 3), 128, np.uint8)), "JPEG")
    files = {
        "apple/rgb.png": (_encode(Image.fromarray(gradient), "PNG"), "ok"),
        "apple/gray.jpg": (_encode(Image.new("L", (16, 16), 90), "JPEG"), "ok"),
        "apple/cmyk.JPEG": (_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "ok"),
        "apple/nested/rgba.png": (_encode(Image.fromarray(rgba, "RGBA"), "PNG"), "ok"),
        "banana/palette.png": (_encode(palette_image, "PNG"), "ok"),
        "banana/palette_transparent.png": (_encode(palette_image, "PNG", transparency=1), "ok"),
        "banana/gray16.png": (_encode(Image.fromarray(gray16), "PNG"), "ok"),
        "banana/rgb16.png": (_png_rgb16(np.full((12, 12, 3), (65535, 0, 257 * 50), np.uint16)), "ok"),
        "banana/photo.webp": (_encode(Image.new("RGB", (16, 16), (10, 20, 30)), "WEBP", lossless=True), "ok"),
        "banana/photo.bmp": (_encode(Image.new("RGB", (16, 16), (10, 20, 30)), "BMP"), "ok"),
        "cherry/broken.jpg": (np.random.default_rng(0).bytes(500), "undecodable"),
        "cherry/truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "undecodable"),
        "cherry/tiny.png": (_encode(Image.new("RGB", (4, 20), (1, 2, 3)), "PNG"), "too small"),
        "cherry/notes.txt": (b"not an image", None),
        "cherry/.hidden.png": (_encode(Image.new("RGB", (16, 16)), "PNG"), None),
    }
    for relative, (data, _) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / ".cache").mkdir()
    return root, {k: v for k, (_, v) in files.items() if v is not None}


def test_image_folder_lists_classes_and_images(image_folder, tmp_path):
    root, expected = image_folder
    source = ImageFolder(root)
    assert source.class_names == ("apple", "banana", "cherry")
    assert len(source) == len(expected)
    relatives = [os.path.relpath(source[i]["path"], root) for i in range(len(source))]
    assert sorted(relatives) == sorted(expected)
    for i, relative in enumerate(relatives):
        assert source[i]["label"] == source.class_names.index(relative.split("/")[0])
    assert "ImageFolder(num_images=13, num_classes=3" in repr(source) and str(root) not in repr(source)

    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolder(tmp_path / "flat", labels="folders")  # "auto" reads it as one class (test_custom_sources)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty.*has no images"):
        ImageFolder(tmp_path / "empty")


def _two_classes(root):
    """root/class_a/a0..a4.png and root/class_b/b0..b4.png (tiny empty files: listing never decodes)."""
    for name in ("a", "b"):
        (root / f"class_{name}").mkdir(parents=True)
        for i in range(5):
            (root / f"class_{name}" / f"{name}{i}.png").write_bytes(b"")
    return root


def _listing(source, root):
    return [(os.path.relpath(record["path"], root), source.class_names[record["label"]]) for record in source]


def test_image_folder_follows_link_loops_once_with_the_right_labels(tmp_path):
    root = _two_classes(tmp_path / "images")
    (root / "class_a" / "loop").symlink_to("..")  # back to the root: once gave 410 records, class_b's as 'a'
    (root / "class_a" / "self").symlink_to(".")
    (root / "class_b" / "sub").mkdir()
    (root / "class_b" / "sub" / "up").symlink_to(root)  # absolute link to the root
    (root / "class_b" / "sub" / "parent").symlink_to("..")  # to its own class folder
    source = ImageFolder(root)
    assert len(source) == 10
    assert _listing(source, root) == [(f"class_{c}/{c}{i}.png", f"class_{c}") for c in "ab" for i in range(5)]
    assert [source[i]["label"] for i in range(10)] == [0] * 5 + [1] * 5
    assert len(image_files(str(root))) == 10  # `tokenize --images` lists folders the same way
    (root / "class_b" / "sub" / "root_of_all").symlink_to("/")  # a folder that holds the root is never walked
    assert len(ImageFolder(root)) == 10


def test_image_folder_takes_class_folders_linked_from_outside(tmp_path):
    root = _two_classes(tmp_path / "images")
    outside = tmp_path / "elsewhere" / "cats"
    outside.mkdir(parents=True)
    for i in range(3):
        (outside / f"c{i}.jpg").write_bytes(b"")
    (outside / "loop").symlink_to(outside)
    (root / "class_c").symlink_to(outside, target_is_directory=True)
    source = ImageFolder(root)
    assert source.class_names == ("class_a", "class_b", "class_c")
    assert len(source) == 13
    assert _listing(source, root)[10:] == [(f"class_c/c{i}.jpg", "class_c") for i in range(3)]


def test_image_folder_lists_a_linked_file_once_and_keeps_hard_links(tmp_path):
    root = _two_classes(tmp_path / "images")
    (root / "class_a" / "same_as_a0.png").symlink_to("a0.png")
    (root / "class_b" / "borrowed.png").symlink_to(root / "class_a" / "a1.png")  # counted in class_a, first
    source = ImageFolder(root)
    assert len(source) == 10
    assert "class_a/same_as_a0.png" not in dict(_listing(source, root))
    assert "class_b/borrowed.png" not in dict(_listing(source, root))
    # A hard link is a second directory entry, not a link to follow: it stays a record, as it always was.
    os.link(root / "class_a" / "a2.png", root / "class_b" / "hard.png")
    assert ("class_b/hard.png", "class_b") in _listing(ImageFolder(root), root)
    assert len(ImageFolder(root)) == 11


def test_every_image_decodes_to_rgb_or_is_skipped_and_counted(image_folder):
    root, expected = image_folder
    counter = transforms.SkipCounter()
    decode = transforms.DecodeImage(min_image_size=8, drop_failures=False, counter=counter)
    outcomes, images = {}, {}
    for record in ImageFolder(root):
        out = decode.map(record)
        relative = os.path.relpath(record["path"], root)
        outcomes[relative] = "ok" if out["mask"] else "skipped"
        if out["mask"]:
            assert out["image"].dtype == np.uint8 and out["image"].ndim == 3 and out["image"].shape[-1] == 3
            images[relative] = out["image"].astype(int)
        else:
            assert out["image"] is None and out["num_skipped"] == 1
    assert outcomes == {k: "ok" if v == "ok" else "skipped" for k, v in expected.items()}
    assert counter.counts() == {"undecodable": 2, "too small": 1}

    assert images["apple/rgb.png"].shape == (16, 24, 3)
    np.testing.assert_allclose(images["apple/gray.jpg"], 90, atol=2)
    np.testing.assert_allclose(images["apple/cmyk.JPEG"], np.broadcast_to([255, 0, 0], (16, 16, 3)), atol=3)
    # Alpha is composited on white: the hidden green under transparent pixels never shows.
    np.testing.assert_array_equal(images["apple/nested/rgba.png"][:, :8], np.broadcast_to([0, 0, 255], (16, 8, 3)))
    np.testing.assert_array_equal(images["apple/nested/rgba.png"][:, 8:], 255)
    np.testing.assert_array_equal(images["banana/palette.png"][0, 9], [0, 255, 0])
    np.testing.assert_array_equal(images["banana/palette_transparent.png"][0, 9], [255, 255, 255])
    np.testing.assert_array_equal(images["banana/palette_transparent.png"][0, 0], [255, 0, 0])
    # 16-bit data is scaled, not clipped: 257 * 100 -> 100.
    np.testing.assert_array_equal(images["banana/gray16.png"][0, 0], [100, 100, 100])
    np.testing.assert_array_equal(images["banana/gray16.png"][0, 15], [255, 255, 255])
    np.testing.assert_array_equal(images["banana/rgb16.png"][0, 0], [255, 0, 50])
    np.testing.assert_array_equal(images["banana/photo.webp"][0, 0], [10, 20, 30])


def test_decode_of_bytes_and_in_memory_records():
    jpeg = _encode(Image.new("RGB", (20, 10), (200, 10, 10)), "JPEG", quality=95)
    image = transforms.decode_image(jpeg)
    assert image.shape == (10, 20, 3) and image.dtype == np.uint8
    with pytest.raises(transforms.DecodeError, match="too small"):
        transforms.decode_image(jpeg, min_image_size=11)
    with pytest.raises(transforms.DecodeError, match="undecodable"):
        transforms.decode_image(b"\xff\xd8 definitely not a jpeg")
    decode = transforms.DecodeImage(drop_failures=False, counter=transforms.SkipCounter())
    assert not decode.map({"image": np.zeros((8, 8), np.uint8), "label": 0})["mask"]  # not RGB: skipped


# ---------------------------------------------------------------- transforms


def test_train_transform_resizes_the_shorter_side_then_crops_and_flips():
    height, width, size = 40, 80, 20
    columns = np.linspace(0, 255, width).astype(np.uint8)
    image = np.stack([np.tile(columns, (height, 1))] * 3, axis=-1)
    image[:, :, 1] = np.linspace(0, 255, height).astype(np.uint8)[:, None]
    resized = transforms.resize_shorter_side(image, size)
    assert resized.shape == (20, 40, 3)
    expected_resize = np.asarray(Image.fromarray(image).resize((40, 20), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(resized, expected_resize)
    # torchvision's rounding of the long side: int(size * long / short).
    assert transforms.resize_shorter_side(np.zeros((33, 50, 3), np.uint8), 16).shape == (16, 24, 3)
    assert transforms.resize_shorter_side(np.zeros((50, 33, 3), np.uint8), 16).shape == (24, 16, 3)

    augment = transforms.RandomCropFlip(size)
    lefts, flips = set(), set()
    for seed in range(40):
        out = augment.random_map(
            {"image": image, "label": np.int32(3), "num_skipped": np.int32(0)}, np.random.default_rng(seed)
        )
        assert out["image"].shape == (size, size, 3) and out["image"].dtype == np.float32
        assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
        assert out["label"] == 3
        pixels = np.rint(out["image"] * 255).astype(np.uint8)
        flipped = pixels[0, 0, 0] > pixels[0, -1, 0]
        unflipped = pixels[:, ::-1] if flipped else pixels
        matches = [left for left in range(21) if np.array_equal(resized[:, left : left + size], unflipped)]
        assert matches, "the crop is not a window of the resized image"
        lefts.add(matches[0])
        flips.add(bool(flipped))
    assert flips == {True, False} and len(lefts) > 5

    out = transforms.ResizeCenterCrop(size).map({"image": image, "label": np.int32(1), "mask": True, "num_skipped": 0})
    np.testing.assert_array_equal(np.rint(out["image"] * 255).astype(np.uint8), resized[:, 10:30])

    # The generator recipe's augmentation: the center crop, randomly flipped.
    center_flip = transforms.RandomCropFlip(size, random_crop=False)
    views = set()
    for seed in range(10):
        record = {"image": image, "label": np.int32(3), "num_skipped": np.int32(0)}
        pixels = np.rint(center_flip.random_map(record, np.random.default_rng(seed))["image"] * 255).astype(np.uint8)
        flipped = np.array_equal(pixels, resized[:, 10:30][:, ::-1])
        assert flipped or np.array_equal(pixels, resized[:, 10:30])
        views.add(flipped)
    assert views == {True, False}


# ---------------------------------------------------------------- TFDS


def _write_tfds_imagenet(data_dir, splits):
    """Writes {split: [(encoded image, label)]} as imagenet2012 in TFDS's array_record layout, without TensorFlow.

    The features are imagenet2012's own (`image` encoded JPEG bytes, `label`, `file_name`), serialized by
    tfds's TF-free tf.Example serializer into array_record files, plus the dataset_info.json tfds reads.
    """
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    from tensorflow_datasets.core import example_serializer, naming
    from tensorflow_datasets.core import splits as splits_lib

    builder = tfds.builder("imagenet2012", data_dir=str(data_dir))
    os.makedirs(builder.data_dir, exist_ok=True)
    serializer = example_serializer.ExampleSerializer(builder.info.features.get_serialized_info())
    split_infos = []
    for split, examples in splits.items():
        template = naming.ShardedFileTemplate(
            data_dir=builder.data_dir, dataset_name=builder.name, split=split, filetype_suffix="array_record"
        )
        writer = ArrayRecordWriter(os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)), "group_size:1")
        num_bytes = 0
        for i, (encoded, label) in enumerate(examples):
            features = {"image": encoded, "label": label, "file_name": f"{split}_{i}.JPEG"}
            serialized = serializer.serialize_example(builder.info.features.encode_example(features))
            writer.write(serialized)
            num_bytes += len(serialized)
        writer.close()
        split_infos.append(
            splits_lib.SplitInfo(
                name=split, shard_lengths=[len(examples)], num_bytes=num_bytes, filename_template=template
            )
        )
    builder.info.set_splits(splits_lib.SplitDict(split_infos))
    builder.info.as_proto.file_format = "array_record"
    builder.info.write_to_directory(builder.data_dir)


def _solid_jpeg(i: int, size=(24, 16)) -> bytes:
    return _encode(Image.new("RGB", size, (i * 20 % 256, 128, 255 - i * 20 % 256)), "JPEG", quality=95)


def test_tfds_array_record_reads_without_tensorflow(tmp_path):
    # Other tests in this process may have imported TensorFlow (clu's metric writers); judge only a clean process.
    tensorflow_already_loaded = "tensorflow" in sys.modules
    gray = _encode(Image.new("L", (20, 20), 60), "JPEG")
    train = [(_solid_jpeg(i), i % 5) for i in range(12)] + [(gray, 7), (b"broken jpeg bytes", 8)]
    _write_tfds_imagenet(tmp_path, {"train": train, "validation": [(_solid_jpeg(i), i) for i in range(5)]})

    source = tfds_source("imagenet2012", "train", data_dir=str(tmp_path))
    assert len(source) == 14
    labels = sorted(int(source[i]["label"]) for i in range(len(source)))
    assert labels == sorted(label for _, label in train)
    assert isinstance(source[0]["image"], bytes)  # decoding is left to the pipeline

    config = _config(source="tfds", data_dir=str(tmp_path), image_size=16)
    iterator = pipeline.make_train_iterator(config, global_batch_size=4, seed=0)
    batches = [next(iterator) for _ in range(8)]  # > 2 epochs: the broken record is met at least twice
    for batch in batches:
        assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
        assert set(batch) == {"image", "label"}
    assert iterator.num_skipped >= 2
    seen = np.concatenate([b["label"] for b in batches])
    assert 8 not in seen and 7 in seen

    evaluation = pipeline.make_eval_iterator(config, global_batch_size=4)
    eval_labels = np.concatenate([b["label"][b["mask"]] for b in evaluation])
    assert eval_labels.tolist() == [0, 1, 2, 3, 4]
    assert tensorflow_already_loaded or "tensorflow" not in sys.modules

    with pytest.raises(FileNotFoundError, match=r"not prepared.*tfds build imagenet2012"):
        tfds_source("imagenet2012", "train", data_dir=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="no split 'test'"):
        tfds_source("imagenet2012", "test", data_dir=str(tmp_path))


# ---------------------------------------------------------------- sharding, resumption, eval padding


@pytest.fixture
def numbered_folder(tmp_path):
    """24 lossless 8x8 images, image i filled with colour (i, 100, 200): the colour tells which example it is."""
    root = tmp_path / "numbered"
    for i in range(24):
        (root / f"class_{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 100, 200)).save(root / f"class_{i % 3}" / f"{i:02d}.png")
    return root


def _ids(batch) -> list[int]:
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


def test_process_shards_are_disjoint_and_cover_the_set(numbered_folder):
    config = _config(source="image_folder", root=str(numbered_folder), image_size=8)
    shards = []
    for process in range(2):
        iterator = pipeline.make_train_iterator(config, 4, seed=3, process_index=process, process_count=2)
        # 12 examples per process per epoch.
        epoch_1 = [i for _ in range(6) for i in _ids(next(iterator))]
        epoch_2 = [i for _ in range(6) for i in _ids(next(iterator))]
        assert sorted(epoch_1) == sorted(epoch_2) and len(set(epoch_1)) == 12
        assert epoch_1 != epoch_2  # reshuffled every epoch
        shards.append(set(epoch_1))
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(range(24))

    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.make_train_iterator(config, 5, seed=0, process_index=0, process_count=2)


def test_state_restore_gives_the_same_next_batches(image_folder):
    # A folder with skipped images: resumption must hold through the filter as well.
    root, _ = image_folder
    config = _config(source="image_folder", root=str(root), image_size=8)
    iterator = pipeline.make_train_iterator(config, 2, seed=5)
    for _ in range(7):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(6)]

    resumed = pipeline.make_train_iterator(config, 2, seed=5)
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(6)], strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])

    # Every index the sampler handed out is either in a batch or counted as skipped.
    consumed = json.loads(iterator.get_state())["last_seen_indices"]["0"] + 1
    assert consumed == 13 * 2 + iterator.num_skipped and iterator.num_skipped > 0

    other_seed = pipeline.make_train_iterator(config, 2, seed=6)
    with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
        other_seed.set_state(state)


def test_orbax_checkpoints_the_iterator_with_grains_handler(tmp_path):
    import orbax.checkpoint as ocp

    config = _config(num_examples=64)
    iterator = pipeline.make_train_iterator(config, 8, seed=1)
    for _ in range(3):
        next(iterator)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = [next(iterator) for _ in range(3)]
        resumed = pipeline.make_train_iterator(config, 8, seed=1)
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    for want, got in zip(expected, [next(resumed) for _ in range(3)], strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])


@pytest.mark.parametrize("size", [0, 2])
def test_device_prefetch_checkpoints_the_position_of_the_last_batch_used(tmp_path, size):
    import jax
    import orbax.checkpoint as ocp

    config = _config(num_examples=64)
    source = pipeline.make_train_iterator(config, 8, seed=1)
    iterator = DevicePrefetch(source, jax.device_put, size)
    batches = [next(iterator) for _ in range(3)]
    assert isinstance(batches[0]["image"], jax.Array)
    # The wrapped iterator has read `size` batches ahead of what the step used.
    assert json.loads(source.get_state())["last_seen_indices"]["0"] + 1 == (3 + size) * 8
    assert json.loads(iterator.get_state())["last_seen_indices"]["0"] + 1 == 3 * 8
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = [next(iterator) for _ in range(4)]
        resumed = DevicePrefetch(pipeline.make_train_iterator(config, 8, seed=1), jax.device_put, size)
        next(resumed)  # reads ahead before the restore: the restore must drop what it holds
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    for want, got in zip(expected, [next(resumed) for _ in range(4)], strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
    unprefetched = pipeline.make_train_iterator(config, 8, seed=1)
    for want in [*batches, *expected]:
        np.testing.assert_array_equal(want["image"], next(unprefetched)["image"])


def test_eval_padding_counts_every_example_exactly_once(numbered_folder):
    # 24 images + 1 broken file, global batch 6 over 2 processes: 25 -> padded to 30, 5 steps on each process.
    (numbered_folder / "class_0" / "broken.jpg").write_bytes(b"\x00" * 64)
    config = _config(source="image_folder", root=str(numbered_folder), eval_root=str(numbered_folder), image_size=8)
    seen, steps, skipped = [], [], 0
    for process in range(2):
        iterator = pipeline.make_eval_iterator(config, 6, process_index=process, process_count=2)
        batches = list(iterator)
        steps.append(len(batches))
        assert len(iterator) == len(batches)
        for batch in batches:
            assert batch["image"].shape == (3, 8, 8, 3) and batch["mask"].dtype == bool
            seen += [i for i, keep in zip(_ids(batch), batch["mask"], strict=True) if keep]
        skipped += iterator.num_skipped
    assert steps == [5, 5]
    assert sorted(seen) == list(range(24))
    assert skipped == 1


def test_synthetic_eval_set_differs_from_train_and_is_complete():
    config = _config(eval_num_examples=13, image_size=16)
    batches = list(pipeline.make_eval_iterator(config, 4, process_index=0, process_count=2))
    batches += list(pipeline.make_eval_iterator(config, 4, process_index=1, process_count=2))
    assert len(batches) == 8  # 13 -> 16 examples, 4 steps of 2 per process
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    reference = SyntheticShapes(13, 16, seed=1)
    expected = np.stack([reference[i]["image"] for i in range(13)]).astype(np.float32) / 255
    np.testing.assert_array_equal(images, expected)
    train_image = SyntheticShapes(13, 16, seed=0)[0]["image"]
    assert not np.array_equal(train_image, reference[0]["image"])


def test_all_broken_data_stops_with_a_clear_error(tmp_path):
    # Without the stop an infinite train iterator would spin forever. 100 files: grain reshuffles per
    # epoch (~10 ms each), which makes a 3-file folder slow to reach 1000 failures.
    (tmp_path / "junk" / "a").mkdir(parents=True)
    for i in range(100):
        (tmp_path / "junk" / "a" / f"{i}.jpg").write_bytes(b"junk")
    iterator = pipeline.make_train_iterator(_config(source="image_folder", root=str(tmp_path / "junk")), 2, seed=0)
    with pytest.raises(Exception, match="data looks broken"):
        next(iterator)


# ---------------------------------------------------------------- config


def test_data_config_validation(tmp_path):
    assert pipeline.validate_data_config(pipeline.default_data_config()).source == "synthetic"
    cases = [
        (dict(source="webdataset"), ValueError, "Unknown data.source 'webdataset'"),
        (dict(source="image_folder"), ValueError, r"needs data\.root"),
        (dict(source="image_folder", root=str(tmp_path / "nope")), FileNotFoundError, "nope"),
        (dict(image_size=0), ValueError, r"data\.image_size"),
        (dict(num_classes=11), ValueError, r"data\.num_classes"),
        (dict(synthetic_variation="easy"), ValueError, r"data\.synthetic_variation must be one of full, centered"),
        (dict(worker_count=-1), ValueError, r"data\.worker_count"),
        (dict(device_prefetch=-1), ValueError, r"data\.device_prefetch must be an int >= 0"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            pipeline.validate_data_config(_config(**overrides))
    config = _config()
    config.num_exampels = 5
    with pytest.raises(ValueError, match=r"Unknown data config fields \['num_exampels'\]"):
        pipeline.validate_data_config(config)
    with pytest.raises(ValueError, match=r"needs data\.eval_root"):
        pipeline.make_eval_iterator(_config(source="image_folder", root=str(tmp_path)), 2)
    with pytest.raises(ValueError, match="seed"):
        pipeline.make_train_iterator(_config(), 2, seed=-1)
