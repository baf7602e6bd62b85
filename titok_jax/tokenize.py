r"""Turn a folder of images into tokens, and tokens back into images (to eyeball reconstructions).

  python -m titok_jax.tokenize --tokenizer=BUNDLE_OR_HUB_DIR --images=DIR --output=OUT
      -> OUT/tokens.npz (tokens, files) + OUT/reconstructions/<name>.png + OUT/grid.png
  python -m titok_jax.tokenize --tokenizer=... --tokens=OUT/tokens.npz --output=OUT2
      -> OUT2/reconstructions/<name>.png + OUT2/grid.png

Images (searched recursively) are resized (shorter side, bicubic) and center-cropped to the
tokenizer's size, the evaluation preprocessing. `grid.png` pairs originals and reconstructions
(first 32). A file that is not a readable image stops the run with its name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging
from PIL import Image

from titok_jax.data.sources import image_files
from titok_jax.data.transforms import DecodeError, center_crop, decode_image, resize_shorter_side
from titok_jax.tokenizer import Tokenizer, to_uint8

GRID_IMAGES = 32


def load_image_folder(folder: str, image_size: int) -> tuple[list[str], np.ndarray]:
    """(relative paths, uint8 images (N, S, S, 3)) of every image under `folder`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images={folder!r} is not a directory.")
    files = image_files(folder)
    if not files:
        raise ValueError(f"No images (.jpg, .jpeg, .png, .webp, .bmp) under {folder!r}.")
    images = []
    for path in files:
        try:
            image = decode_image(path)
        except DecodeError as err:
            raise ValueError(f"{path!r} is not a readable image: {err}. Remove or replace the file.") from err
        images.append(center_crop(resize_shorter_side(image, image_size), image_size))
    return [os.path.relpath(f, folder) for f in files], np.stack(images)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _write_images(output: str, names: Sequence[str], images: np.ndarray, originals: np.ndarray | None) -> None:
    folder = os.path.join(output, "reconstructions")
    for name, image in zip(names, images, strict=True):
        path = os.path.join(folder, os.path.splitext(name)[0] + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
    shown = images[:GRID_IMAGES]
    rows = [shown] if originals is None else [originals[:GRID_IMAGES], shown]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    Image.fromarray(grid).save(os.path.join(output, "grid.png"))


def tokenize_folder(tokenizer: Tokenizer, images_dir: str, output: str, batch_size: int = 64) -> dict[str, Any]:
    names, images = load_image_folder(images_dir, tokenizer.image_size)
    tokens = np.concatenate([tokenizer.encode(images[s]) for s in _batches(len(images), batch_size)])
    os.makedirs(output, exist_ok=True)
    npz = os.path.join(output, "tokens.npz")
    with open(npz + ".tmp", "wb") as f:
        np.savez(f, tokens=tokens, files=np.asarray(names))
    os.replace(npz + ".tmp", npz)
    summary: dict[str, Any] = {"images": len(names), "tokens": list(tokens.shape), "tokens_file": npz}
    if tokenizer.model.decodes_to_pixels:
        recon = np.concatenate([tokenizer.decode(tokens[s]) for s in _batches(len(tokens), batch_size)])
        _write_images(output, names, to_uint8(recon), images)
        summary["mse"] = float(np.mean((recon - images.astype(np.float32) / 255.0) ** 2))
    return summary


def detokenize(tokenizer: Tokenizer, tokens_file: str, output: str, batch_size: int = 64) -> dict[str, Any]:
    if not os.path.isfile(tokens_file):
        raise FileNotFoundError(f"--tokens={tokens_file!r} does not exist (a tokens.npz from --images).")
    with np.load(tokens_file) as data:
        if "tokens" not in data:
            raise ValueError(f"{tokens_file!r} has no 'tokens' array (expected a tokens.npz from --images).")
        tokens = data["tokens"]
        names = list(data["files"]) if "files" in data else [f"{i:06d}.png" for i in range(len(tokens))]
    recon = np.concatenate([tokenizer.decode(tokens[s]) for s in _batches(len(tokens), batch_size)])
    _write_images(output, [str(n) for n in names], to_uint8(recon), None)
    return {"images": len(tokens), "output": output}


def _define_flags() -> None:
    flags.DEFINE_string("tokenizer", None, "A titok_jax bundle or an official hub directory.", required=True)
    flags.DEFINE_string("config", None, "config.json / official .yaml when --tokenizer is a weights file.")
    flags.DEFINE_string("images", None, "Folder of images to tokenize.")
    flags.DEFINE_string("tokens", None, "tokens.npz to turn back into images.")
    flags.DEFINE_string("output", None, "Output directory.", required=True)
    flags.DEFINE_integer("batch_size", 64, "Images per call.")


def main(argv: Sequence[str]) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if (FLAGS.images is None) == (FLAGS.tokens is None):
        raise app.UsageError("Give exactly one of --images (encode) and --tokens (decode).")
    tokenizer = Tokenizer.load(FLAGS.tokenizer, config=FLAGS.config)
    if FLAGS.images is not None:
        summary = tokenize_folder(tokenizer, FLAGS.images, FLAGS.output, FLAGS.batch_size)
    else:
        summary = detokenize(tokenizer, FLAGS.tokens, FLAGS.output, FLAGS.batch_size)
    logging.info("%s", summary)
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
