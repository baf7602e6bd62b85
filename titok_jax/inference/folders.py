r"""A folder of images -> tokens.npz (+ reconstructions), and tokens.npz -> images (`python -m titok_jax.tokenize`).

  tokenize_folder: DIR -> OUT/tokens.npz (tokens, files) + OUT/reconstructions/<name>.png + OUT/grid.png
                   (+ OUT/skipped.txt when some files could not be read); num_tokens=k keeps the first k tokens
  detokenize:      OUT/tokens.npz -> OUT2/reconstructions/<name>.png + OUT2/grid.png

Images (searched recursively) are resized (shorter side, bicubic) and center-cropped to the
tokenizer's size, the evaluation preprocessing; the summary says how many were and from which sizes.
`grid.png` shows originals over reconstructions (the first 128, 16 per row, rows labelled, tiles of
at least 128 px). A file that cannot be read (undecodable, truncated, unreadable) is skipped and counted
as training does: listed in the summary and in skipped.txt, never stopping the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from titok_jax import files, images, logs
from titok_jax.data.sources import image_files
from titok_jax.data.transforms import DecodeError, SkipCounter, decode_image, resize_center_crop
from titok_jax.images import to_uint8
from titok_jax.inference.tokenizer import Tokenizer
from titok_jax.models.titok import check_prefix_lengths

GRID_IMAGES = 128  # 8 pairs of 16-image rows: one 16-row page
SKIPPED_FILE = "skipped.txt"
SKIPPED_LISTED = 100  # skipped files named in the summary; skipped.txt names all of them
SIZES_LISTED = 10  # original sizes named in the resize notice, most common first


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """The readable images of a folder at the tokenizer's size, and what happened to the others."""

    names: list[str]  # relative paths of the images kept, in listing order
    images: np.ndarray  # uint8 (N, S, S, 3)
    skipped: list[tuple[str, str]]  # (relative path, reason) of the files that could not be read
    resized_from: Counter[str]  # "WxH" -> how many kept images had that size (only sizes other than S x S)


def load_image_folder(folder: str, image_size: int) -> FolderImages:
    """Every image file under `folder`, decoded as training decodes them and brought to `image_size` by the
    evaluation preprocessing; files that cannot be read are skipped and counted (logged, rate-limited)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images={folder!r} is not a directory.")
    paths = image_files(folder)
    if not paths:
        raise ValueError(f"No images (.jpg, .jpeg, .png, .webp, .bmp) under {folder!r}.")
    counter = SkipCounter()
    names, kept, skipped, resized_from = [], [], [], Counter()
    for path in logs.bar(paths, "read images", unit="image"):
        name = os.path.relpath(path, folder)
        try:
            image = decode_image(path)
        except DecodeError as error:
            counter.record(str(error).split(" (")[0], f"{path} [{error}]")
            skipped.append((name, str(error)))
            continue
        if image.shape[:2] != (image_size, image_size):
            resized_from[f"{image.shape[1]}x{image.shape[0]}"] += 1
        names.append(name)
        kept.append(resize_center_crop(image, image_size))
    stacked = np.stack(kept) if kept else np.zeros((0, image_size, image_size, 3), np.uint8)
    return FolderImages(names, stacked, skipped, resized_from)


def _skip_report(loaded: FolderImages, output: str) -> dict[str, Any]:
    """Writes (or, with nothing skipped, removes a stale) OUTPUT/skipped.txt; the summary's skip fields."""
    path = os.path.join(output, SKIPPED_FILE)
    if not loaded.skipped:
        if os.path.exists(path):
            os.remove(path)
        return {"skipped": 0}
    with files.atomic_write(path, "w") as f:
        f.writelines(f"{name}\t{reason}\n" for name, reason in loaded.skipped)
    reasons = Counter(reason.split(" (")[0] for _, reason in loaded.skipped)
    return {
        "skipped": len(loaded.skipped),
        "skipped_reasons": dict(reasons),
        "skipped_files": [{"file": name, "reason": reason} for name, reason in loaded.skipped[:SKIPPED_LISTED]],
        "skipped_list": path,
    }


def _resize_notice(loaded: FolderImages, image_size: int) -> dict[str, Any] | None:
    """One notice for every image the evaluation preprocessing changed: how many, to what, from which sizes."""
    count = sum(loaded.resized_from.values())
    if not count:
        return None
    common = loaded.resized_from.most_common(SIZES_LISTED)
    sizes = ", ".join(f"{size} ({n})" for size, n in common)
    more = len(loaded.resized_from) - len(common)
    sizes += f" and {more} other sizes" if more > 0 else ""
    notice = (
        f"{count} of {len(loaded.names)} images were resized (shorter side, bicubic) and center-cropped to "
        f"{image_size}x{image_size} px, the tokenizer's size, from {sizes}."
    )
    logging.warning("%s", notice)
    return {"images": count, "to": f"{image_size}x{image_size}", "from": dict(common), "notice": notice}


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


def _write_images(output: str, names: Sequence[str], decoded: np.ndarray, originals: np.ndarray | None) -> None:
    """`names` are relative paths already known to stay inside `output` (file-system listings or checked)."""
    folder = os.path.join(output, "reconstructions")
    for name, image in zip(names, decoded, strict=True):
        path = os.path.join(folder, os.path.splitext(name)[0] + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
    shown = decoded[:GRID_IMAGES]
    if originals is None:
        rows = images.chunked_rows(shown, "decoded")
    else:  # each row of originals right above its reconstructions
        pairs = zip(
            images.chunked_rows(originals[:GRID_IMAGES], "original"),
            images.chunked_rows(shown, "reconstructed"),
            strict=True,
        )
        rows = [row for pair in pairs for row in pair]
    images.save_pages(images.labelled_pages(rows), output)


def check_num_tokens(tokenizer: Tokenizer, num_tokens: int) -> None:
    """--num_tokens (0: all K) must be 1..K, and below K only for a variable-length tokenizer."""
    if num_tokens:
        check_prefix_lengths(tokenizer.model, [num_tokens], "--num_tokens")


def tokenize_folder(
    tokenizer: Tokenizer, images_dir: str, output: str, batch_size: int = 64, num_tokens: int = 0
) -> dict[str, Any]:
    """Every readable image under `images_dir` -> OUTPUT/tokens.npz, and (a tokenizer that decodes to pixels)
    OUTPUT/reconstructions + grid.png; returns a summary with the skipped files and the resize notice.
    `num_tokens` k > 0 keeps each image's first k tokens (a variable-length tokenizer, model.token_dropout):
    tokens.npz holds k columns and the reconstructions decode that prefix."""
    check_num_tokens(tokenizer, num_tokens)  # before any image is read
    loaded = load_image_folder(images_dir, tokenizer.image_size)
    os.makedirs(output, exist_ok=True)
    skips = _skip_report(loaded, output)
    if not loaded.names:
        reasons = ", ".join(f"{n} {reason}" for reason, n in skips["skipped_reasons"].items())
        raise ValueError(
            f"None of the {skips['skipped']} image files under {images_dir!r} could be read ({reasons}); they are "
            f"listed in {skips['skipped_list']}. Replace them or point --images at another folder."
        )
    names, pixels = loaded.names, loaded.images
    tokens = np.concatenate([tokenizer.encode(pixels[s]) for s in _batches(len(pixels), batch_size)])
    if num_tokens:
        tokens = tokens[:, :num_tokens]  # a VAE's (B, K, C) latents too: the token axis is 1
    npz = os.path.join(output, "tokens.npz")
    with files.atomic_write(npz) as f:
        np.savez(f, tokens=tokens, files=np.asarray(names))
    summary: dict[str, Any] = {"images": len(names), "tokens": list(tokens.shape), "tokens_file": npz, **skips}
    resized = _resize_notice(loaded, tokenizer.image_size)
    if resized is not None:
        summary["resized"] = resized
    if tokenizer.model.decodes_to_pixels:
        recon = np.concatenate([tokenizer.decode(tokens[s]) for s in _batches(len(tokens), batch_size)])
        _write_images(output, names, to_uint8(recon), pixels)
        summary["mse"] = float(np.mean((recon - pixels.astype(np.float32) / 255.0) ** 2))
    return summary


def detokenize(
    tokenizer: Tokenizer, tokens_file: str, output: str, batch_size: int = 64, num_tokens: int = 0
) -> dict[str, Any]:
    """tokens.npz -> output/reconstructions/<name>.png + output/grid.png. A variable-length tokenizer decodes a
    file of fewer than K tokens per image as it is, and `num_tokens` k > 0 decodes only each row's first k.

    The names come from the file's 'files' array (else 000000.png, ...). A name is a relative path
    inside the output folder ('im0.png', 'sub/im0.png'); one that is absolute, holds '..', a '.' or
    empty part, or a backslash is refused with a ValueError before anything is decoded or written,
    rather than rewritten, so that no file lands where the data file, not the user, chose.
    """
    check_num_tokens(tokenizer, num_tokens)
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
    if num_tokens:
        if tokens.ndim < 2 or tokens.shape[1] < num_tokens:
            raise ValueError(
                f"--num_tokens={num_tokens}, but {tokens_file!r} holds tokens of shape {tokens.shape}: at most "
                f"{tokens.shape[1] if tokens.ndim >= 2 else 0} per image. Give a smaller --num_tokens or drop it."
            )
        tokens = tokens[:, :num_tokens]
    recon = np.concatenate([tokenizer.decode(tokens[s]) for s in _batches(len(tokens), batch_size)])
    _write_images(output, names, to_uint8(recon), None)
    return {"images": len(tokens), "output": output}
