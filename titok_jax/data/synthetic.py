"""Procedural shapes: the built-in data set that needs no download.

Every image is one shape kind (the label) in a random colour, position and size
over a random gradient background ("full" variation), or, for CPU-sized runs, a
large centred shape of fixed geometry over a flat background in random colours
("centered" variation: a tiny tokenizer trained for minutes can render it, so a
tiny generator's samples show recognisable shapes). Shapes are drawn from signed distance
functions with a one-pixel soft edge, so edges are anti-aliased without
supersampling and a 32 px image costs well under a millisecond of numpy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Label i is SHAPE_KINDS[i]; a data set with num_classes=k uses the first k kinds.
SHAPE_KINDS = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "diamond",
    "x_cross",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
)

# Foreground and background colours at least this far apart (RGB, 0-255) keep the shape visible.
_MIN_CONTRAST = 90.0

VARIATIONS = ("full", "centered")
# The "centered" variation's shape size, as a fraction of the image side (the top of the full variation's range).
_CENTERED_RADIUS = 0.36


class _CoarsestDraws:
    """Stands in for the generator the SDFs draw shape parameters from: every draw is its range's top.

    The "centered" variation uses it so each class has one geometry, its coarsest (the widest stripes
    and checks, the thickest ring), while colours still come from the real generator.
    """

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return high


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the pixel centres, each (size, size)."""
    centers = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(centers, centers, indexing="ij")
    return x, y


def _centered_distance(kind: str, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """The signed distance field of `kind` in its "centered" form: image centre, fixed size, coarsest geometry."""
    return _SDFS[kind](x - size / 2, y - size / 2, _CENTERED_RADIUS * size, _CoarsestDraws())


def _stripes(u: np.ndarray, period: float) -> np.ndarray:
    """Signed distance to the 'on' half of a square wave of `period` along u (negative inside)."""
    return np.abs(np.mod(u, period) - period / 2) - period / 4


def _box(dx: np.ndarray, dy: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    # Chebyshev-style box distance: exact inside and along the edges, which is all the soft edge needs.
    return np.maximum(np.abs(dx) - half_w, np.abs(dy) - half_h)


def _circle(dx, dy, r, rng):
    return np.hypot(dx, dy) - r


def _square(dx, dy, r, rng):
    return _box(dx, dy, 0.8 * r, 0.8 * r)


def _triangle(dx, dy, r, rng):
    # Equilateral triangle of circumradius r: the intersection of three half-planes at inradius r / 2.
    angle = rng.uniform(0, 2 * np.pi)
    normals = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    return np.max(np.cos(normals)[:, None, None] * dx + np.sin(normals)[:, None, None] * dy, axis=0) - r / 2


def _plus(dx, dy, r, rng):
    arm = 0.3 * r
    return np.minimum(_box(dx, dy, r, arm), _box(dx, dy, arm, r))


def _ring(dx, dy, r, rng):
    thickness = rng.uniform(0.15, 0.3) * r
    return np.abs(np.hypot(dx, dy) - (r - thickness)) - thickness


def _diamond(dx, dy, r, rng):
    return (np.abs(dx) + np.abs(dy)) / np.sqrt(2) - 0.75 * r


def _x_cross(dx, dy, r, rng):
    u, v = (dx + dy) / np.sqrt(2), (dx - dy) / np.sqrt(2)
    return _plus(u, v, r, rng)


def _period(r, rng):
    # At least 4 px so that a stripe is two pixels wide even in the smallest image.
    return max(4.0, rng.uniform(0.3, 0.8) * r)


def _horizontal_stripes(dx, dy, r, rng):
    return _stripes(dy, _period(r, rng)) + 0 * dx


def _vertical_stripes(dx, dy, r, rng):
    return _stripes(dx, _period(r, rng)) + 0 * dy


def _checkerboard(dx, dy, r, rng):
    # Soft XOR of two square waves; returned as a distance-like value that the caller clips the same way.
    period = _period(r, rng)
    on_x = np.clip(0.5 - _stripes(dx, period), 0, 1)
    on_y = np.clip(0.5 - _stripes(dy, period), 0, 1)
    return 0.5 - (on_x * (1 - on_y) + on_y * (1 - on_x))


_SDFS: dict[str, Callable[..., np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "ring": _ring,
    "diamond": _diamond,
    "x_cross": _x_cross,
    "horizontal_stripes": _horizontal_stripes,
    "vertical_stripes": _vertical_stripes,
    "checkerboard": _checkerboard,
}


class SyntheticShapes:
    """A grain random-access source of `{"image": uint8 (H, W, 3), "label": int32}` shape images.

    Record i depends only on (seed, variation, i): label is `i % num_classes` (so classes are
    balanced in every contiguous shard), the rest is drawn from a generator seeded
    with (seed, i). Different seeds give different images for the same index.
    """

    def __init__(
        self, num_examples: int, image_size: int, num_classes: int = 10, seed: int = 0, variation: str = "full"
    ):
        if num_examples < 1:
            raise ValueError(f"SyntheticShapes needs num_examples >= 1, got {num_examples}.")
        if image_size < 8:
            raise ValueError(f"SyntheticShapes needs image_size >= 8, got {image_size}.")
        if not 1 <= num_classes <= len(SHAPE_KINDS):
            raise ValueError(
                f"SyntheticShapes has {len(SHAPE_KINDS)} shape kinds ({', '.join(SHAPE_KINDS)}); "
                f"num_classes must be in [1, {len(SHAPE_KINDS)}], got {num_classes}."
            )
        if variation not in VARIATIONS:
            raise ValueError(f"SyntheticShapes variation must be one of {VARIATIONS}, got {variation!r}.")
        self.num_examples = num_examples
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.variation = variation
        self._x, self._y = _pixel_grid(image_size)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        # grain checks this string when it restores an iterator: it must identify the data, nothing more.
        return (
            f"SyntheticShapes(num_examples={self.num_examples}, image_size={self.image_size}, "
            f"num_classes={self.num_classes}, seed={self.seed}, variation={self.variation!r})"
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"SyntheticShapes index {index} out of range [0, {self.num_examples}).")
        label = index % self.num_classes
        return {"image": self._draw(label, np.random.default_rng((self.seed, index))), "label": np.int32(label)}

    def _draw(self, label: int, rng: np.random.Generator) -> np.ndarray:
        centered = self.variation == "centered"
        kind = SHAPE_KINDS[label]
        distance = _centered_distance(kind, self._x, self._y, self.image_size) if centered else self._placed(kind, rng)
        alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]  # one-pixel anti-aliased edge
        base = rng.uniform(0, 255, size=3)
        background = base if centered else self._gradient(base, rng)

        foreground = rng.uniform(0, 255, size=3)
        for _ in range(8):
            if np.linalg.norm(foreground - base) >= _MIN_CONTRAST:
                break
            foreground = rng.uniform(0, 255, size=3)
        else:
            foreground = np.where(base > 127.5, base - 127.5, base + 127.5)

        image = background * (1 - alpha) + foreground * alpha
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    def _placed(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        """The full variation's distance field: random size, position and geometry."""
        size = self.image_size
        radius = rng.uniform(0.18, 0.38) * size
        # Keep most of the shape inside the frame; a little clipping at the border adds variety.
        center = rng.uniform(0.7 * radius, size - 0.7 * radius, size=2)
        return _SDFS[kind](self._x - center[0], self._y - center[1], radius, rng)

    def _gradient(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The full variation's background: `base` plus a linear gradient in a random direction."""
        size = self.image_size
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-6
        ramp = ((self._x - size / 2) * direction[0] + (self._y - size / 2) * direction[1]) / size
        return base + rng.uniform(-80, 80, size=3) * ramp[..., None]


def centered_templates(image_size: int, num_classes: int = 10) -> np.ndarray:
    """The shape masks of the "centered" variation: float (num_classes, H, W) in [0, 1], 1 on the shape."""
    x, y = _pixel_grid(image_size)
    return np.stack(
        [np.clip(0.5 - _centered_distance(kind, x, y, image_size), 0.0, 1.0) for kind in SHAPE_KINDS[:num_classes]]
    )


def nearest_template_labels(images: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """The shape kind whose "centered" mask best explains each image, whatever its two colours.

    Every "centered" image is `background + (foreground - background) * mask` per channel, so for each
    class the least-squares fit of that form leaves a residual; the class with the smallest one wins.
    Colours carry no class information here, so this judges shape alone: it names the label of every
    real "centered" image, and of a decoder's output only if the shape came through. A mask and its
    mirror image both count for their class (training data may be flipped: the triangle points the
    other way, the stripes shift).

    images: float (N, H, W, 3) in any range -> int labels (N,).
    """
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"nearest_template_labels needs square RGB images (N, S, S, 3), got shape {images.shape}.")
    masks = centered_templates(images.shape[1], num_classes)
    templates = np.concatenate([masks, masks[:, :, ::-1]]).reshape(2 * num_classes, -1)  # (2K, P)
    pixels = images.reshape(images.shape[0], -1, 3)  # (N, P, 3)
    # Per class, regress every channel on [1, mask]: residual = |x - mean x|^2 - (cov(x, m))^2 / var(m).
    centred_masks = templates - templates.mean(axis=1, keepdims=True)
    centred_pixels = pixels - pixels.mean(axis=1, keepdims=True)
    covariance = np.einsum("kp,npc->nkc", centred_masks, centred_pixels)
    explained = np.sum(covariance**2, axis=-1) / np.sum(centred_masks**2, axis=1)[None]  # (N, K)
    return np.argmax(explained, axis=1) % num_classes
