"""Image decoding and the train / eval transforms, as grain transforms.

Decoding turns any image PIL can read into RGB uint8 (H, W, 3):
- grayscale, palette, CMYK, YCbCr, 1-bit: PIL's own conversion to RGB;
- alpha (RGBA, LA, PA, palette with transparency): composited on WHITE, which is
  how the image looks in a browser; dropping alpha would expose arbitrary colours
  that the author hid under transparent pixels;
- 16-bit (I;16*, I): scaled by 255/65535 (8-bit values stored as I stay as they are);
  32-bit float (F): [0, 1] data scaled by 255, else clipped to [0, 255].
EXIF orientation is not applied, like the reference PIL/torchvision pipeline.

A missing, undecodable or truncated file, an unsupported mode, or an image whose
shorter side is below `min_image_size` is skipped: counted (by reason) in this process's
`SKIPPED` counter, logged with its path (rate-limited), and reported to the
trainer through the per-example `num_skipped` field, which also works when
decoding runs in grain worker processes.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image

# Fields the decode step adds; the iterator wrapper pops `num_skipped` before the trainer sees a batch.
NUM_SKIPPED = "num_skipped"
MASK = "mask"
PADDING = "is_padding"  # set by the eval padding source on examples that only fill the last batch


class DecodeError(ValueError):
    """An image that cannot be turned into an RGB uint8 array of the minimum size."""


class SkipCounter:
    """Counts skipped images in this process by reason; logs the first few, then every `log_every`-th."""

    def __init__(self, log_first: int = 20, log_every: int = 1000):
        self.log_first = log_first
        self.log_every = log_every
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, reason: str, where: str) -> None:
        with self._lock:
            self._counts[reason] += 1
            total = sum(self._counts.values())
        if total <= self.log_first or total % self.log_every == 0:
            logging.warning(
                "Skipped image %s: %s (%d skipped so far in process %d).", where, reason, total, os.getpid()
            )

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """Skips by reason, e.g. {"undecodable": 3, "too small": 1}."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


# Skips of this process (the main process when worker_count=0, else each worker counts its own).
SKIPPED = SkipCounter()


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _from_high_bit_depth(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 1.0
        gray = np.nan_to_num(values.astype(np.float64) * scale)
    elif image.mode == "I" and int(values.max(initial=0)) <= 255:
        gray = values.astype(np.float64)  # 8-bit data that happens to be stored as 32-bit ints
    else:
        gray = values.astype(np.float64) * (255.0 / 65535.0)
    gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _composite_on_white(image: Image.Image) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    return np.clip(np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> RGB uint8 (H, W, 3); see the module docstring for each mode."""
    mode = image.mode
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        return _from_high_bit_depth(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:  # tRNS chunks of P, L and RGB PNGs, GIFs
        return _composite_on_white(image)
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes | str | os.PathLike, min_image_size: int = 1) -> np.ndarray:
    """Encoded bytes or a file path -> RGB uint8 (H, W, 3); raises DecodeError with the reason."""
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            encoded = bytes(data)
        else:
            # A listed file may be gone (image lists are not checked up front): skipped like a broken one.
            try:
                with open(data, "rb") as f:
                    encoded = f.read()
            except FileNotFoundError as error:
                raise DecodeError(f"missing (FileNotFoundError: {error.strerror})") from error
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()  # decodes now, so that truncated files fail here
            array = to_rgb_uint8(image)
    except DecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        raise DecodeError(f"undecodable ({type(error).__name__}: {error})") from error
    return check_image(array, min_image_size)


def check_image(array: np.ndarray, min_image_size: int = 1) -> np.ndarray:
    """Validates an already decoded image (e.g. from the synthetic source)."""
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise DecodeError(f"expected RGB uint8 (H, W, 3), got {array.dtype} {array.shape}")
    if min(array.shape[:2]) < min_image_size:
        raise DecodeError(f"too small ({array.shape[1]}x{array.shape[0]} < {min_image_size} px)")
    return array


def _where(record: dict[str, Any]) -> str:
    for key in ("path", "file_name"):
        if key in record:
            value = record[key]
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return "<in-memory record>"


class DecodeImage(grain.transforms.Map):
    """`{"image": bytes | uint8 array, "label"}` or `{"path", "label"}` -> RGB uint8 + bookkeeping.

    Output: `{"image": uint8 (H, W, 3) or None when skipped, "label": int32,
    "num_skipped": int32, "mask": bool}`.

    With `drop_failures` (train) a skipped record is dropped by `KeepDecoded`
    later, so its count rides on the next good record of the same worker
    (`num_skipped` = skips since the previous good record). Without it (eval)
    every record stays, a skipped one with `mask=False` and `num_skipped=1`.
    `max_consecutive_failures` stops a pipeline whose data is all broken
    instead of letting an infinite train loop spin without output.
    """

    def __init__(
        self,
        min_image_size: int = 8,
        drop_failures: bool = True,
        max_consecutive_failures: int = 1000,
        counter: SkipCounter | None = None,
    ):
        self.min_image_size = min_image_size
        self.drop_failures = drop_failures
        self.max_consecutive_failures = max_consecutive_failures
        self.counter = counter
        # Per worker: each grain worker process holds its own copy of this transform.
        self._pending_skips = 0
        self._consecutive_failures = 0

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        label = np.int32(record.get("label", 0))
        if record.get(PADDING, False):
            return {"image": None, "label": label, NUM_SKIPPED: np.int32(0), MASK: np.False_}
        try:
            if "path" in record:
                image = decode_image(record["path"], self.min_image_size)
            elif isinstance(record.get("image"), np.ndarray):
                image = check_image(record["image"], self.min_image_size)
            else:
                image = decode_image(record["image"], self.min_image_size)
        except DecodeError as error:
            reason = str(error)
            (self.counter or SKIPPED).record(reason.split(" (")[0], f"{_where(record)} [{reason}]")
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.max_consecutive_failures:
                raise RuntimeError(
                    f"{self._consecutive_failures} images in a row could not be used (last: {_where(record)}: "
                    f"{reason}); the data looks broken."
                ) from error
            if self.drop_failures:
                self._pending_skips += 1
            skipped = 0 if self.drop_failures else 1
            return {"image": None, "label": label, NUM_SKIPPED: np.int32(skipped), MASK: np.False_}
        self._consecutive_failures = 0
        skipped, self._pending_skips = self._pending_skips, 0
        return {"image": image, "label": label, NUM_SKIPPED: np.int32(skipped), MASK: np.True_}


class KeepDecoded(grain.transforms.Filter):
    """Drops records that DecodeImage skipped, so that train batches stay full."""

    def filter(self, record: dict[str, Any]) -> bool:
        return record["image"] is not None


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize (PIL, which antialiases when shrinking) so the shorter side is `size`.

    The longer side is `int(size * long / short)`, as torchvision's Resize(size) computes it.
    uint8 (H, W, 3) images resize as RGB; float ones channel by channel as PIL 32-bit float images (the same
    filter, without rounding to 8 bits; bicubic can overshoot the input's range, so callers clip).
    """
    height, width = image.shape[:2]
    if min(height, width) == size:
        return image
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BICUBIC))
    channels = [
        Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
            (new_width, new_height), Image.Resampling.BICUBIC
        )
        for c in range(image.shape[-1])
    ]
    return np.stack([np.asarray(channel) for channel in channels], axis=-1)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision CenterCrop offsets: round((side - size) / 2)."""
    height, width = image.shape[:2]
    top, left = round((height - size) / 2), round((width - size) / 2)
    return image[top : top + size, left : left + size]


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The evaluation preprocessing of one (H, W, 3) image: shorter side to `size` (bicubic), center crop to
    `size` x `size`. Images already of that size come back unchanged."""
    return center_crop(resize_shorter_side(image, size), size)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], dividing by 255 as torchvision's ToTensor does."""
    return image.astype(np.float32) / np.float32(255.0)


class RandomCropFlip(grain.transforms.RandomMap):
    """Train augmentation of the reference: shorter side to `image_size` (bicubic), random crop, random h-flip.

    `random_crop=False` takes the center crop instead (the official generator recipe: center crop + flip).

    grain hands each record a generator seeded by (seed, global sample index), so
    the result is reproducible and resumes exactly from an iterator checkpoint.
    """

    def __init__(self, image_size: int, random_crop: bool = True):
        self.image_size = image_size
        self.random_crop = random_crop

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        size = self.image_size
        image = resize_shorter_side(record["image"], size)
        height, width = image.shape[:2]
        # Always draw all three numbers so that the stream of draws never depends on the image shape.
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        flip = bool(rng.random() < 0.5)
        if not self.random_crop:
            top, left = round((height - size) / 2), round((width - size) / 2)  # as center_crop
        image = image[top : top + size, left : left + size]
        if flip:
            image = image[:, ::-1]
        return {"image": to_unit_float(image), "label": record["label"], NUM_SKIPPED: record[NUM_SKIPPED]}


class ResizeCenterCrop(grain.transforms.Map):
    """Eval transform: shorter side to `image_size` (bicubic), center crop; skipped records become masked zeros."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        size = self.image_size
        if record["image"] is None:
            image = np.zeros((size, size, 3), np.float32)
        else:
            image = to_unit_float(resize_center_crop(record["image"], size))
        return {"image": image, "label": record["label"], MASK: record[MASK], NUM_SKIPPED: record[NUM_SKIPPED]}
