"""Parameter tables moved to another model size: the grid positional embedding of a new image or patch size, a
latent-token table of another token count, a generator's class rows for another number of classes.

Each function takes the loaded table and the fresh (newly initialised) one of the target shape, and returns
a table of the target shape. Rows that have no loaded counterpart come from the fresh table, so nothing is
made up; a table that already has the target shape comes back unchanged (bit for bit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def grid_positions(loaded: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """A (1 + g*g, width) [class | grid] positional embedding resized to (1 + G*G, width): the class row kept,
    the g x g grid interpolated bicubically to G x G (as timm / the ViT papers move position tables)."""
    loaded, fresh = np.asarray(loaded), np.asarray(fresh)
    if loaded.shape == fresh.shape:
        return loaded
    old, new = _grid_side(loaded.shape[0] - 1), _grid_side(fresh.shape[0] - 1)
    if old is None or new is None or loaded.shape[1] != fresh.shape[1]:
        raise ValueError(
            f"cannot resize a positional embedding {loaded.shape} to {fresh.shape}: both need 1 + a square number "
            "of rows and the same width"
        )
    grid = jnp.asarray(loaded[1:].reshape(old, old, -1), jnp.float32)
    resized = jax.image.resize(grid, (new, new, grid.shape[-1]), method="bicubic", antialias=new < old)
    rows = np.asarray(resized, loaded.dtype).reshape(new * new, -1)
    return np.concatenate([loaded[:1], rows], axis=0)


def leading_rows(loaded: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """A (K, ...) table (latent tokens, their positions) moved to K' rows: the first min(K, K') loaded rows,
    then the fresh rows K..K'-1 when it grows."""
    loaded, fresh = np.asarray(loaded), np.asarray(fresh)
    if loaded.shape[1:] != fresh.shape[1:]:
        raise ValueError(f"cannot move a table {loaded.shape} to {fresh.shape}: only the row count may change")
    kept = min(loaded.shape[0], fresh.shape[0])
    return np.concatenate([loaded[:kept], fresh[kept:]], axis=0).astype(loaded.dtype)


def class_rows(loaded: np.ndarray, fresh: np.ndarray, codebook_size: int) -> np.ndarray:
    """A MaskGIT word-embedding table [codes (C) | mask (1) | classes (N) | null class (1)] moved to N' classes:
    codes, mask and the null class kept, the first min(N, N') class rows kept, new classes from the fresh rows."""
    loaded, fresh = np.asarray(loaded), np.asarray(fresh)
    head = codebook_size + 1
    if loaded.shape[1:] != fresh.shape[1:] or min(loaded.shape[0], fresh.shape[0]) < head + 1:
        raise ValueError(f"cannot move a class table {loaded.shape} to {fresh.shape} over {codebook_size} codes")
    old_classes, new_classes = loaded.shape[0] - head - 1, fresh.shape[0] - head - 1
    kept = min(old_classes, new_classes)
    parts = [loaded[: head + kept], fresh[head + kept : head + new_classes], loaded[-1:]]
    return np.concatenate(parts, axis=0).astype(loaded.dtype)


def _grid_side(rows: int) -> int | None:
    side = round(rows**0.5)
    return side if side * side == rows and side > 0 else None
