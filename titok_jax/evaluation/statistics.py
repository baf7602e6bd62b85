"""Streaming feature statistics for FID: float64 running sums on the host.

Feature batches arrive from a sharded jitted step as global arrays; every process
gathers the whole global batch (`process_allgather`), so all processes hold identical
sums. A boolean mask drops padding and undecodable examples, so an evaluation set
padded to whole batches counts each real example exactly once.
"""

from __future__ import annotations

import jax
import numpy as np

from titok_jax.sharding import to_host


class RunningStatistics:
    """Count, sum and sum of outer products of feature vectors, in float64."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def update(self, features: jax.Array | np.ndarray, mask: jax.Array | np.ndarray | None = None) -> None:
        """Adds the rows of `features` (N, dim) whose `mask` is True (all rows without a mask)."""
        features = to_host(features).astype(np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"Expected features (N, {self.dim}), got {features.shape}.")
        if mask is not None:
            features = features[to_host(mask).astype(bool)]
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) with the unbiased covariance (as np.cov, which pytorch-fid uses)."""
        if self.count < 2:
            raise ValueError(f"Need at least 2 examples for a covariance, got {self.count}.")
        mean = self.total / self.count
        covariance = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean, covariance
