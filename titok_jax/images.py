"""Image helpers shared by every writer of pictures: uint8 conversion and grids."""

from __future__ import annotations

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] images -> uint8, rounded (the evaluation protocol's /255 rounding)."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(rows: np.ndarray) -> np.ndarray:
    """(R, C, H, W, 3) images, float in [0, 1] or uint8 -> one uint8 (R*H, C*W, 3) image."""
    rows = np.asarray(rows)
    tiled = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return tiled if tiled.dtype == np.uint8 else to_uint8(tiled)


def grid_of(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, 3) images -> a uint8 grid of `columns` per row, the last row padded with black."""
    images = np.asarray(images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    padding = np.zeros((rows * columns - len(images), *images.shape[1:]), images.dtype)
    return image_grid(np.concatenate([images, padding]).reshape(rows, columns, *images.shape[1:]))
