"""Inception Score, codebook usage / entropy, PSNR and SSIM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` of exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax of the Inception logits
    (the 1008-way FID Inception head), as in Salimans et al. and the ADM evaluator."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise ValueError(f"Inception Score over {splits} splits needs at least {splits} images, got {len(logits)}.")
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = np.logaddexp.reduce(part, axis=0, keepdims=True) - np.log(len(part))
        p = np.exp(part)
        kl = np.sum(np.where(p > 0, p * (part - log_marginal), 0.0), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """The ADM evaluator's IS: exp(E_x KL(p(y|x) || p(y))) on consecutive splits of `split_size` samples (the
    last may be shorter), averaged; ADM reports no std."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < 2:
        raise ValueError(f"Inception Score needs at least 2 images, got {len(logits)}.")
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    scores = []
    for start in range(0, len(log_p), split_size):
        part = log_p[start : start + split_size]
        log_marginal = np.logaddexp.reduce(part, axis=0, keepdims=True) - np.log(len(part))
        scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
    return float(np.mean(scores))


def codebook_usage_and_entropy(counts: np.ndarray) -> tuple[float, float]:
    """(fraction of codes used at least once, entropy in bits of the code frequencies)."""
    counts = np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise ValueError("No codes were counted.")
    p = counts[counts > 0] / counts.sum()
    return float(np.mean(counts > 0)), float(-(p * np.log2(p)).sum())


def psnr(images: jax.Array, targets: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Per-image PSNR in dB of NHWC images."""
    mse = jnp.mean(jnp.square(images.astype(jnp.float32) - targets.astype(jnp.float32)), axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    w = jnp.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(images: jax.Array, targets: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Per-image SSIM of NHWC images (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, valid region, population covariances, channel mean) = skimage's
    `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False, channel_axis=-1)`."""
    window = _gaussian_window()
    channels = images.shape[-1]

    def blur(x):  # separable valid Gaussian filter per channel
        x = jnp.moveaxis(x, -1, 1).reshape(-1, 1, *x.shape[1:3])
        kernel = window[None, None]
        x = jax.lax.conv_general_dilated(x, kernel[..., None, :], (1, 1), "VALID", precision="highest")
        x = jax.lax.conv_general_dilated(x, kernel[..., :, None], (1, 1), "VALID", precision="highest")
        return x.reshape(-1, channels, *x.shape[2:])

    x, y = images.astype(jnp.float32), targets.astype(jnp.float32)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))
