"""The ADM evaluator's Inception Score against a numpy reference written from its formula."""

import numpy as np
import pytest

from titok_jax.evaluation.scores import adm_inception_score


def reference_adm_is(logits: np.ndarray, split_size: int) -> float:
    """ADM: softmax, then per consecutive split of split_size: exp(mean_x sum_y p (log p - log mean_x p))."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start : start + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores))


@pytest.mark.parametrize("count, split_size", [(1000, 100), (1030, 100), (500, 5000)])
def test_adm_inception_score_matches_the_reference(count, split_size):
    logits = np.random.default_rng(count).normal(scale=3.0, size=(count, 1008))
    ours = adm_inception_score(logits, split_size)
    assert ours == pytest.approx(reference_adm_is(logits, split_size), rel=1e-10)
    assert ours > 1.5  # confident, varied predictions: far from the IS of 1 of identical ones


def test_identical_predictions_score_one_and_one_hot_classes_score_their_count():
    assert adm_inception_score(np.tile(np.arange(10.0), (50, 1)), 25) == pytest.approx(1.0)
    one_hot = np.where(np.eye(8)[np.arange(80) % 8] > 0, 60.0, -60.0)  # 8 classes, each certain
    assert adm_inception_score(one_hot, 40) == pytest.approx(8.0, rel=1e-6)
