"""`python -m titok_jax.tokenize` on a messy folder, and the Tokenizer's own preprocessing, messages and repr."""

import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RNGS, model_for
from PIL import Image

from titok_jax import tokenize
from titok_jax.data.transforms import resize_center_crop
from titok_jax.inference.folders import tokenize_folder
from titok_jax.inference.tokenizer import Tokenizer, save_bundle


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """The tiny VQ tokenizer (32 px, 16 tokens, 256 codes) with random weights: enough to check the plumbing."""
    model = model_for("titok_single_stage.py:tiny_vq")
    variables = nn.meta.unbox(jax.jit(model.init)(RNGS, jnp.zeros((1, *model.image_shape))))
    return Tokenizer(model, variables, source="/runs/tiny", metadata={"step": 3})


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def messy_folder(tmp_path):
    """Four usable images (RGB, grayscale, RGBA at 32 px; a 300x200 photo) and two broken files."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "good.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / "gray.png")  # mode L
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    (folder / "broken.png").write_bytes(b"not a png at all")
    whole = _png_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return folder


def test_a_messy_folder_is_tokenized_with_the_broken_files_skipped_and_listed(tok, messy_folder, tmp_path):
    output = tmp_path / "out"
    summary = tokenize.run(None, tokenize.Options(tokenizer=_bundle(tok, tmp_path), images=str(messy_folder),
                                                  output=str(output)))  # fmt: skip
    json.dumps(summary)  # the command prints it as JSON
    assert summary["images"] == 4 and summary["tokens"] == [4, 16]
    assert summary["skipped"] == 2 and summary["skipped_reasons"] == {"undecodable": 2}
    assert [s["file"] for s in summary["skipped_files"]] == ["broken.png", "truncated.png"]
    assert all(s["reason"].startswith("undecodable (") for s in summary["skipped_files"])
    lines = (output / "skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["broken.png", "truncated.png"]
    assert "truncated" in lines[1].split("\t")[1]  # PIL's own reason, so the user knows what is wrong

    resized = summary["resized"]
    assert (resized["images"], resized["to"], resized["from"]) == (1, "32x32", {"300x200": 1})
    assert "1 of 4 images were resized (shorter side, bicubic) and center-cropped to 32x32 px" in resized["notice"]
    assert "from 300x200 (1)" in resized["notice"]

    data = np.load(output / "tokens.npz")
    assert list(data["files"]) == ["good.png", "gray.png", "photo.jpg", "rgba.png"]
    opened = [Image.open(messy_folder / name) for name in data["files"]]
    np.testing.assert_array_equal(data["tokens"], tok.encode(tok.preprocess(opened)))
    assert sorted(p.name for p in (output / "reconstructions").iterdir()) == [
        "good.png", "gray.png", "photo.png", "rgba.png"
    ]  # fmt: skip
    grid = np.asarray(Image.open(output / "grid.png"))
    assert grid.shape[0] == 2 * 128  # a row of 4 originals over its 4 reconstructions, tiles upscaled 4x
    assert (grid.shape[1] - 4 * 128) > 20  # the label margin ("original", "reconstructed")

    # The same output again with the broken files gone: no stale skipped.txt, no skip fields.
    (messy_folder / "broken.png").unlink()
    (messy_folder / "truncated.png").unlink()
    again = tokenize_folder(tok, str(messy_folder), str(output))
    assert again["skipped"] == 0 and "skipped_files" not in again and not (output / "skipped.txt").exists()


def test_a_folder_of_only_broken_files_says_so_in_one_line(tok, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"junk")
    (folder / "b.jpg").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"None of the 2 image files under .* could be read \(2 undecodable\).*skipped\.txt"
    ):
        tokenize_folder(tok, str(folder), str(tmp_path / "out"))
    assert len((tmp_path / "out" / "skipped.txt").read_text().splitlines()) == 2
    assert not (tmp_path / "out" / "tokens.npz").exists()


def _bundle(tok: Tokenizer, tmp_path) -> str:
    return save_bundle(tok, str(tmp_path / "bundle"))


def test_preprocess_resizes_crops_and_converts_any_input(tok):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rows, columns = np.mgrid[0:32, 0:48]
    ramp = np.stack([columns * 5, rows * 7, (rows + columns) * 3], axis=-1).astype(np.uint8)  # 32 x 48
    doubled = np.kron(ramp, np.ones((2, 2, 1), np.uint8))  # 64 x 96: shorter side to 32 -> 32 x 48, crop 8:40
    gray = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    floats = rng.random((32, 32, 3), dtype=np.float32)
    out = tok.preprocess([Image.fromarray(small), doubled, gray, floats])
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(out[0], small / np.float32(255))  # already 32 px: untouched
    np.testing.assert_array_equal(out[1], resize_center_crop(doubled, 32) / np.float32(255))  # the eval transform
    assert np.abs(out[1] * 255 - ramp[:, 8:40]).max() <= 1.01  # halved (bicubic keeps a ramp) and centred
    np.testing.assert_array_equal(out[2][..., 0], out[2][..., 2])  # grayscale stacked to 3 channels
    np.testing.assert_array_equal(out[2][..., 0], gray[4:36] / np.float32(255))  # 32 px wide: crop only
    np.testing.assert_array_equal(out[3], floats)  # floats at size: not rounded to 8 bits

    # Floats are resized as floats: they agree with the uint8 path to within its rounding.
    as_float = tok.preprocess(doubled.astype(np.float32) / 255)
    assert as_float.shape == (1, 32, 32, 3)
    assert np.abs(as_float[0] - out[1]).max() <= 1.01 / 255
    # A (B, H, W) array is a batch of grayscale images; an RGBA PIL image is composited on white.
    assert tok.preprocess(np.stack([gray, gray])).shape == (2, 32, 32, 3)
    transparent = Image.fromarray(np.zeros((50, 50, 4), np.uint8), mode="RGBA")
    np.testing.assert_array_equal(tok.preprocess(transparent), np.ones((1, 32, 32, 3), np.float32))


def test_preprocess_refuses_what_it_cannot_read(tok):
    with pytest.raises(ValueError, match=r"image 0 has shape \(8, 8, 4\).*RGBA\? pass a PIL image"):
        tok.preprocess([np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"image 1 is int64; pass uint8"):
        tok.preprocess([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int64)])
    with pytest.raises(ValueError, match=r"image 0 is float in \[0, 255\], not \[0, 1\]; divide"):
        tok.preprocess([np.linspace(0.0, 255.0, 192).reshape(8, 8, 3)])
    with pytest.raises(ValueError, match="got no images"):
        tok.preprocess([])


def test_a_grayscale_batch_is_told_it_lacks_the_channel_axis(tok):
    for batch in (np.zeros((2, 32, 32), np.uint8), np.zeros((2, 32, 32, 1), np.uint8)):
        with pytest.raises(ValueError, match=r"grayscale images without 3 channels.*Stack them to 3 channels.*"
                                             r"tokenizer\.preprocess\(images\)"):  # fmt: skip
            tok.encode(batch)
    with pytest.raises(ValueError, match=r"4 channels \(RGBA\?\).*images\[\.\.\., :3\]"):
        tok.encode(np.zeros((2, 32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match=r"Resize / center-crop to 32 px first: tokenizer\.preprocess"):
        tok.encode(np.zeros((2, 64, 64, 3), np.uint8))
    assert tok.encode(tok.preprocess(np.zeros((2, 64, 64), np.uint8))).shape == (2, 16)  # the fix works


def test_repr_names_source_size_tokens_codebook_and_step(tok):
    assert repr(tok) == (
        "Tokenizer('/runs/tiny', checkpoint step 3: 32x32 px -> 16 tokens, VQ codebook of 256 codes x 8 dims)"
    )
    unknown_step = Tokenizer(tok.model, tok.host_variables(), source="hub/dir")
    assert repr(unknown_step) == "Tokenizer('hub/dir': 32x32 px -> 16 tokens, VQ codebook of 256 codes x 8 dims)"
