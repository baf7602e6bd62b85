r"""A folder of images -> tokens.npz (+ reconstructions), and tokens.npz -> images (`python -m titok_jax.tokenize`).

  tokenize_folder: DIR -> OUT/tokens.npz (tokens, files) + OUT/reconstructions/<name>.png + OUT/grid.png
  detokenize:      OUT/tokens.npz -> OUT2/reconstructions/<name>.png + OUT2/grid.png

Images (searched recursively) are resized (shorter side, bicubic) and center-cropped to the
tokenizer's size, the evaluation preprocessing. `grid.png` pairs originals and reconstructions
(first 32). A file that is not a readable image stops the run with its name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from titok_jax import files
from titok_jax.data.sources import image_files
from titok_jax.data.transforms import DecodeError, center_crop, decode_image, resize_shorter_side
from titok_jax.images import image_grid, to_uint8
from titok_jax.inference.tokenizer import Tokenizer

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


def safe_relative_name(name: str) -> bool:
    """Whether `name` is a relative path of plain parts ('im0.png', 'sub/im0.png' as `tokenize_folder`
    records nested folders), so that joining it to a folder stays inside that folder: no absolute path,
    no '..', no '.' or empty part, no backslash (a separator on Windows) or NUL."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _checked_names(names: np.ndarray, num_images: int, tokens_file: str) -> list[str]:
    """The 'files' entries of a tokens.npz, refused (before anything is decoded or written) where one would
    choose a place outside the output folder: the names come from a data file, which may not be ours."""
    if names.ndim != 1 or len(names) != num_images:
        raise ValueError(
            f"{tokens_file!r} has 'files' of shape {names.shape} for {num_images} token rows; expected one name "
            "per row. Fix the file or drop its 'files' array (names then are 000000.png, 000001.png, ...)."
        )
    checked = [str(name) for name in names]
    for index, name in enumerate(checked):
        if not safe_relative_name(name):
            raise ValueError(
                f"{tokens_file!r} entry {index} of 'files' is {name!r}, which would be written outside the output "
                "folder or has no file name; names must be relative paths without '..', '.', empty parts or "
                "backslashes (e.g. 'im0.png' or 'sub/im0.png'). Fix the names or drop the 'files' array."
            )
    return checked


def _write_images(output: str, names: Sequence[str], images: np.ndarray, originals: np.ndarray | None) -> None:
    """`names` are relative paths already known to stay inside `output` (file-system listings or checked)."""
    folder = os.path.join(output, "reconstructions")
    for name, image in zip(names, images, strict=True):
        path = os.path.join(folder, os.path.splitext(name)[0] + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
    shown = images[:GRID_IMAGES]
    rows = [shown] if originals is None else [originals[:GRID_IMAGES], shown]
    Image.fromarray(image_grid(np.stack(rows))).save(os.path.join(output, "grid.png"))


def tokenize_folder(tokenizer: Tokenizer, images_dir: str, output: str, batch_size: int = 64) -> dict[str, Any]:
    names, images = load_image_folder(images_dir, tokenizer.image_size)
    tokens = np.concatenate([tokenizer.encode(images[s]) for s in _batches(len(images), batch_size)])
    os.makedirs(output, exist_ok=True)
    npz = os.path.join(output, "tokens.npz")
    with files.atomic_write(npz) as f:
        np.savez(f, tokens=tokens, files=np.asarray(names))
    summary: dict[str, Any] = {"images": len(names), "tokens": list(tokens.shape), "tokens_file": npz}
    if tokenizer.model.decodes_to_pixels:
        recon = np.concatenate([tokenizer.decode(tokens[s]) for s in _batches(len(tokens), batch_size)])
        _write_images(output, names, to_uint8(recon), images)
        summary["mse"] = float(np.mean((recon - images.astype(np.float32) / 255.0) ** 2))
    return summary


def detokenize(tokenizer: Tokenizer, tokens_file: str, output: str, batch_size: int = 64) -> dict[str, Any]:
    """tokens.npz -> output/reconstructions/<name>.png + output/grid.png.

    The names come from the file's 'files' array (else 000000.png, ...). A name is a relative path
    inside the output folder ('im0.png', 'sub/im0.png'); one that is absolute, holds '..', a '.' or
    empty part, or a backslash is refused with a ValueError before anything is decoded or written,
    rather than rewritten, so that no file lands where the data file, not the user, chose.
    """
    if not os.path.isfile(tokens_file):
        raise FileNotFoundError(f"--tokens={tokens_file!r} does not exist (a tokens.npz from --images).")
    with np.load(tokens_file) as data:
        if "tokens" not in data:
            raise ValueError(f"{tokens_file!r} has no 'tokens' array (expected a tokens.npz from --images).")
        tokens = data["tokens"]
        if "files" in data:
            names = _checked_names(data["files"], len(tokens), tokens_file)
        else:
            names = [f"{i:06d}.png" for i in range(len(tokens))]
    recon = np.concatenate([tokenizer.decode(tokens[s]) for s in _batches(len(tokens), batch_size)])
    _write_images(output, names, to_uint8(recon), None)
    return {"images": len(tokens), "output": output}
