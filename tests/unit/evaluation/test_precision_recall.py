"""Improved precision / recall against a float64 numpy reference written from the spec (ADM's ManifoldEstimator:
k = 3 radii within each set, self at index 0; a point counts when its squared distance is <= a radius)."""

import numpy as np
import pytest

from titok_jax.evaluation.precision_recall import manifold_radii, precision_recall


def reference_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def squared(a, b):
        return np.sum(np.square(a[:, None, :] - b[None, :, :]), axis=-1)

    real_radii = np.sort(squared(real, real), axis=1)[:, k]
    fake_radii = np.sort(squared(fake, fake), axis=1)[:, k]
    cross = squared(real, fake)  # (real, fake)
    precision = np.mean([np.any(cross[:, j] <= real_radii) for j in range(len(fake))])
    recall = np.mean([np.any(cross[i, :] <= fake_radii) for i in range(len(real))])
    return float(precision), float(recall)


@pytest.mark.parametrize("block", [7, 10_000])  # blocks smaller than the sets, and one block for everything
def test_random_features_match_the_reference(block):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 16))
    fake = rng.normal(size=(45, 16)) * 1.3 + 0.4  # wider and shifted: neither 0 nor 1
    precision, recall = precision_recall(real, fake, block=block)
    expected = reference_precision_recall(real, fake)
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    assert 0 < precision < 1 and 0 < recall < 1


def test_ties_and_duplicate_points_match_the_reference():
    # Integer points on a small grid: many exact ties (squared distances are exact in float32), and duplicates,
    # so a radius can be 0 (a point with 3 copies of itself) and points sit exactly on a ball's surface.
    rng = np.random.default_rng(1)
    real = rng.integers(0, 4, size=(40, 2)).astype(np.float32)
    fake = np.concatenate([rng.integers(0, 6, size=(30, 2)), np.repeat([[9, 9]], 4, axis=0)]).astype(np.float32)
    assert len(np.unique(real, axis=0)) < len(real)  # duplicates present
    precision, recall = precision_recall(real, fake, block=16)
    assert (precision, recall) == pytest.approx(reference_precision_recall(real, fake), abs=1e-12)
    radii = manifold_radii(fake)
    np.testing.assert_array_equal(radii[-4:], 0.0)  # the four copies of (9, 9): their 3rd neighbour is a copy


def test_symmetric_cases():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(50, 8))
    assert precision_recall(points, points) == (1.0, 1.0)  # a set against itself
    assert precision_recall(points, points + 1000.0) == (0.0, 0.0)  # far apart: no sample in any ball


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="Feature sizes differ"):
        precision_recall(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((5, 2)))
