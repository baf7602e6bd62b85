"""Pretokenization's ten-crop views equal torchvision's TenCrop (the official script's transform)."""

import numpy as np
import torch
from torchvision.transforms import v2

from titok_jax.inference import pretokenize


def test_ten_crop_matches_torchvision():
    image = np.random.default_rng(0).random((35, 35, 3)).astype(np.float32)
    expected = v2.TenCrop(32)(torch.from_numpy(image).permute(2, 0, 1))
    np.testing.assert_array_equal(
        pretokenize.ten_crop(image, 32), np.stack([c.permute(1, 2, 0).numpy() for c in expected])
    )
