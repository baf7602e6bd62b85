"""Image helpers shared by every writer of pictures: uint8 conversion, plain grids, and readable grids
(tiles upscaled to a size a screen shows, rows labelled at their left, paged over several PNGs)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A 32 px tile is a smudge on a monitor; 128 px shows a shape. Larger tiles are never shrunk.
MIN_TILE = 128
# One page: 16 x 16 tiles of 128 px is a 2048 px square, about what a screen (or an image viewer) shows whole.
PAGE_ROWS = 16
PAGE_COLUMNS = 16
BACKGROUND = 255  # white margins and empty tile slots
INK = 0
_LABEL_PADDING = 6  # px between the margin's edges and the label text


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] images -> uint8, rounded (the evaluation protocol's /255 rounding)."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else to_uint8(images)


def image_grid(rows: np.ndarray) -> np.ndarray:
    """(R, C, H, W, 3) images, float in [0, 1] or uint8 -> one uint8 (R*H, C*W, 3) image."""
    rows = np.asarray(rows)
    tiled = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return _as_uint8(tiled)


def grid_of(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, 3) images -> a uint8 grid of `columns` per row, the last row padded with black."""
    images = np.asarray(images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    padding = np.zeros((rows * columns - len(images), *images.shape[1:]), images.dtype)
    return image_grid(np.concatenate([images, padding]).reshape(rows, columns, *images.shape[1:]))


def upscale_factor(tile_size: int, min_tile: int = MIN_TILE) -> int:
    """The smallest integer factor that makes a `tile_size` px tile at least `min_tile` px (1: never shrink)."""
    return max(1, -(-min_tile // max(1, tile_size)))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (H, W, ...) by an integer factor: each pixel becomes a factor^2 block,
    so no colour is invented (interpolation would blur exactly the detail one zooms in to see)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def readable_grid(rows: np.ndarray, min_tile: int = MIN_TILE) -> np.ndarray:
    """(R, C, H, W, 3) images -> a uint8 grid whose tiles are upscaled (nearest, by an integer factor) to at
    least `min_tile` px on their shorter side, e.g. for TensorBoard, which shows images at their own size."""
    rows = np.asarray(rows)
    return upscale(image_grid(rows), upscale_factor(min(rows.shape[2:4]), min_tile))


@dataclasses.dataclass(frozen=True)
class GridRow:
    """One labelled row of a grid: the label (drawn in the left margin) and its images (C, H, W, 3)."""

    label: str
    images: np.ndarray


def class_label(class_id: int, class_names: Sequence[str] | None = None) -> str:
    """The class's name when `class_names` has one for it, else its id."""
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return str(int(class_id))


def class_rows(
    images: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str] | None = None,
    columns: int = PAGE_COLUMNS,
) -> list[GridRow]:
    """One row per run of equal class ids (samples come in class order), wrapped after `columns` images; every
    row carries its class label, so a page that starts inside a class still says which class it shows."""
    class_ids = np.asarray(class_ids)
    if len(images) != len(class_ids):
        raise ValueError(f"Got {len(images)} images but {len(class_ids)} class ids; pass one class id per image.")
    starts = np.flatnonzero(np.r_[True, class_ids[1:] != class_ids[:-1]]) if len(class_ids) else np.array([], int)
    ends = np.r_[starts[1:], len(class_ids)]
    rows = []
    for start, end in zip(starts, ends, strict=True):
        label = class_label(int(class_ids[start]), class_names)
        rows.extend(GridRow(label, images[i : min(i + columns, end)]) for i in range(start, end, columns))
    return rows


def chunked_rows(images: np.ndarray, label: str, columns: int = PAGE_COLUMNS) -> list[GridRow]:
    """`images` in rows of `columns`, all under one label."""
    return [GridRow(label, images[i : i + columns]) for i in range(0, len(images), columns)]


def _font_size(tile_height: int) -> int:
    # An eighth of the tile (16 px on 128 px tiles), never below a legible 12 px nor above 32.
    return max(12, min(32, tile_height // 8))


def _font(tile_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=_font_size(tile_height))


def labelled_pages(
    rows: Sequence[GridRow], rows_per_page: int = PAGE_ROWS, min_tile: int = MIN_TILE
) -> Iterator[np.ndarray]:
    """uint8 pages of at most `rows_per_page` rows: a white left margin with each row's label, then the row's
    tiles upscaled (nearest, integer factor) to at least `min_tile` px; short rows end in white.

    Every page has the same margin, tile size and width, so pages line up. Pages are made one at a time:
    50,000 samples at 256 px would be gigabytes as one list."""
    if not rows:
        raise ValueError("A grid needs at least one row of images.")
    if rows_per_page < 1:
        raise ValueError(f"rows_per_page must be >= 1, got {rows_per_page}.")
    tile_height, tile_width = np.asarray(rows[0].images).shape[1:3]
    factor = upscale_factor(min(tile_height, tile_width), min_tile)
    tile_height, tile_width = tile_height * factor, tile_width * factor
    font = _font(tile_height)
    text_width = max(int(np.ceil(font.getlength(row.label))) for row in rows)
    margin = text_width + 2 * _LABEL_PADDING
    columns = max(len(row.images) for row in rows)
    for first in range(0, len(rows), rows_per_page):
        page_rows = rows[first : first + rows_per_page]
        canvas = np.full((len(page_rows) * tile_height, margin + columns * tile_width, 3), BACKGROUND, np.uint8)
        for r, row in enumerate(page_rows):
            top = r * tile_height
            for c, image in enumerate(_as_uint8(row.images)):
                left = margin + c * tile_width
                canvas[top : top + tile_height, left : left + tile_width] = upscale(image, factor)
        page = Image.fromarray(canvas)
        draw = ImageDraw.Draw(page)
        for r, row in enumerate(page_rows):
            # Centred on the row by the text's own box (anchors need FreeType, which a Pillow may lack).
            _, text_top, _, text_bottom = draw.textbbox((0, 0), row.label, font=font)
            top = r * tile_height + (tile_height - text_top - text_bottom) / 2
            draw.text((_LABEL_PADDING, top), row.label, fill=(INK, INK, INK), font=font)
        yield np.asarray(page)


def labelled_grid(rows: Sequence[GridRow], min_tile: int = MIN_TILE) -> np.ndarray:
    """All `rows` on one uint8 page (see labelled_pages)."""
    return next(labelled_pages(rows, rows_per_page=len(rows), min_tile=min_tile))


def labelled_columns(columns: Sequence[GridRow], min_tile: int = MIN_TILE) -> np.ndarray:
    """uint8 grid of `columns` side by side (each GridRow a column: its label drawn in a white band above, its
    images top to bottom), tiles upscaled (nearest, integer factor) to at least `min_tile` px. The band is
    header_height(tile) px; below it the grid is exactly (rows * tile, columns * tile)."""
    if not columns:
        raise ValueError("A grid needs at least one column of images.")
    tile_height, tile_width = np.asarray(columns[0].images).shape[1:3]
    factor = upscale_factor(min(tile_height, tile_width), min_tile)
    tile_height, tile_width = tile_height * factor, tile_width * factor
    font = _font(tile_height)
    header = header_height(tile_height)
    rows = max(len(column.images) for column in columns)
    canvas = np.full((header + rows * tile_height, len(columns) * tile_width, 3), BACKGROUND, np.uint8)
    for c, column in enumerate(columns):
        for r, image in enumerate(_as_uint8(column.images)):
            top, left = header + r * tile_height, c * tile_width
            canvas[top : top + tile_height, left : left + tile_width] = upscale(image, factor)
    page = Image.fromarray(canvas)
    draw = ImageDraw.Draw(page)
    for c, column in enumerate(columns):
        left, text_top, right, text_bottom = draw.textbbox((0, 0), column.label, font=font)
        x = c * tile_width + (tile_width - (right - left)) / 2
        draw.text((x, (header - text_top - text_bottom) / 2), column.label, fill=(INK, INK, INK), font=font)
    return np.asarray(page)


def header_height(tile_height: int) -> int:
    """The label band of `labelled_columns` above tiles `tile_height` px high (after upscaling)."""
    return 2 * _LABEL_PADDING + _font_size(tile_height)


def page_name(index: int, stem: str = "grid") -> str:
    """grid.png, grid_1.png, grid_2.png, ...: the first page keeps the name a single grid always had."""
    return f"{stem}.png" if index == 0 else f"{stem}_{index}.png"


def save_pages(pages: Iterable[np.ndarray], folder: str, stem: str = "grid") -> list[str]:
    """Writes the pages as grid.png, grid_1.png, ... into `folder`; removes higher-numbered pages an earlier,
    larger run left there (they would show other samples). Returns the file names written."""
    names = []
    for index, page in enumerate(pages):
        names.append(page_name(index, stem))
        Image.fromarray(page).save(os.path.join(folder, names[-1]))
    page = re.compile(rf"{re.escape(stem)}_([0-9]+)\.png")
    for entry in os.listdir(folder):
        match = page.fullmatch(entry)
        if match and int(match.group(1)) >= len(names):
            os.remove(os.path.join(folder, entry))
    return names


def usage_histogram(counts: np.ndarray, height: int = 96, max_columns: int = 512) -> np.ndarray:
    """A bar chart (H, W, 3) uint8 of per-code use, codes sorted from most to least used: a healthy codebook is
    a flat block, a collapsed one a spike, and the unused codes are the empty tail (red on the base line).
    More codes than `max_columns` share columns (their mean)."""
    ordered = np.sort(np.asarray(counts, np.float64).reshape(-1))[::-1]
    columns = min(len(ordered), max_columns)
    per_column = np.array_split(ordered, columns)
    heights = np.array([chunk.mean() for chunk in per_column]) / max(ordered[0], 1e-12)
    used = np.array([chunk.max() > 0 for chunk in per_column])
    width = max(1, max_columns // columns)
    chart = np.full((height, columns * width, 3), 255, np.uint8)
    bars = chart[:-2]  # the bars stand on a 2-row base line: grey under used codes, red under unused ones
    bar_rows = np.arange(len(bars))[::-1][:, None] < np.round(heights * len(bars))[None, :]  # (H - 2, columns)
    bars[np.repeat(bar_rows, width, axis=1)] = (40, 90, 200)
    chart[-2:] = np.where(np.repeat(used, width)[:, None], (160, 160, 160), (220, 40, 40)).astype(np.uint8)
    return chart
