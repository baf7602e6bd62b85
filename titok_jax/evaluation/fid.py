"""Fréchet distance between Gaussians, and reference statistics files.

d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2), in float64 with
`eigh`: no complex intermediate results and no failure on singular covariances
(e.g. fewer samples than dimensions), where `scipy.linalg.sqrtm` of the non-symmetric
product needs pytorch-fid's epsilon retry.
"""

from __future__ import annotations

import os

import numpy as np

from titok_jax.files import atomic_write


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID when these are Inception statistics)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"Statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}."
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray, **extra: np.ndarray) -> None:
    """Writes `.npz` {mu, sigma, ...} (the layout pytorch-fid and the ADM evaluator read), atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        np.savez(f, mu=mu, sigma=sigma, **extra)


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a statistics `.npz`: ours, pytorch-fid's, or an ADM reference batch
    (`VIRTUAL_imagenet256_labeled.npz`: its `mu` / `sigma` are the 2048-d pool statistics)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Reference statistics {path!r} do not exist. Compute them with "
            "`python -m titok_jax.evaluate --reference_statistics=...` over the reference split, or use an ADM "
            "reference batch (e.g. VIRTUAL_imagenet256_labeled.npz)."
        )
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{path!r} holds {sorted(data.keys())}, not reference statistics (mu, sigma).")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
