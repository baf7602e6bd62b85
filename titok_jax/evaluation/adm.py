"""The ADM evaluator's five numbers (openai/guided-diffusion `evaluations/evaluator.py`) from our FID Inception:
FID and precision / recall on the 2048-d pool features, sFID on the 2023-d `mixed_6/conv` spatial features,
and IS (the mean over splits of 5,000 samples; ADM reports no std).

A reference is an ADM reference batch (`VIRTUAL_imagenet256_labeled.npz`: `mu`, `sigma`, `mu_s`, `sigma_s` and
the reference images `arr_0`, whose pool features precision / recall need) or the statistics
`python -m titok_jax.evaluate --write_reference_statistics` writes (the same keys, with the pool features of up
to 10,000 reference images as `pool_features` instead of the images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.evaluation import fid, precision_recall, scores
from titok_jax.evaluation.statistics import RunningStatistics
from titok_jax.models import inception

IS_SPLIT_SIZE = 5000  # ADM: IS per split of 5,000 samples (10 splits for 50k), mean only
MAX_REFERENCE_FEATURES = 10_000  # ADM's reference batches hold 10k images for precision / recall
# How images reach the network here: what the JSON's "protocol" records so that two numbers can be compared.
PROTOCOL = {
    "network": "pytorch-fid FID Inception-v3 (TF inception-2015-12-05 weights when the file is given)",
    "input": "uint8 NHWC images / 255, bilinear resize to 299 without antialias (torch F.interpolate), 2x - 1",
    "fid_features": "pool3, 2048-d",
    "sfid_features": "Mixed_6d 1x1 branch (ADM mixed_6/conv), first 7 channels at 17 x 17 = 2023-d",
    "covariance": "float64, N - 1 denominator",
    "inception_score": f"mean over splits of {IS_SPLIT_SIZE} samples",
    "precision_recall": f"k = {precision_recall.NEIGHBOURHOOD} radii, squared distances, fp32",
}


@jax.jit
def adm_features(inception_vars: Any, images_uint8: jax.Array) -> dict[str, jax.Array]:
    """uint8 images -> {"pool" (B, 2048), "logits" (B, 1008), "spatial" (B, 2023)}."""
    return inception.all_features(inception_vars, images_uint8.astype(jnp.float32) / 255.0)


@dataclasses.dataclass
class FeatureSet:
    """What the five metrics read of an image set: streaming statistics, logits, and (some) pool features."""

    pool: RunningStatistics
    spatial: RunningStatistics
    logits: np.ndarray  # (N, 1008)
    pool_features: np.ndarray  # (min(N, keep), 2048) float32, for precision / recall


class FeatureAccumulator:
    """Streams batches of images through the network into a FeatureSet (host memory: the statistics, the
    logits and at most `keep` pool features)."""

    def __init__(self, inception_vars: Any, keep: int | None = None):
        self.inception_vars, self.keep = inception_vars, keep
        self.pool = RunningStatistics(inception.POOL_FEATURES)
        self.spatial = RunningStatistics(inception.SPATIAL_FEATURES)
        self.logits: list[np.ndarray] = []
        self.kept: list[np.ndarray] = []

    def add(self, images_uint8: jax.Array, mask: np.ndarray | jax.Array) -> None:
        """A (global, sharded) uint8 batch; `mask` is False on padding."""
        out = sh.to_host(adm_features(self.inception_vars, images_uint8))
        mask = np.asarray(sh.to_host(mask), bool)
        self.pool.update(out["pool"], mask)
        self.spatial.update(out["spatial"], mask)
        self.logits.append(out["logits"][mask])
        room = (self.pool.count if self.keep is None else self.keep) - sum(len(k) for k in self.kept)
        if room > 0:
            self.kept.append(out["pool"][mask][:room].astype(np.float32))

    def result(self) -> FeatureSet:
        return FeatureSet(self.pool, self.spatial, np.concatenate(self.logits), np.concatenate(self.kept))


def image_set_features(
    images: np.ndarray, inception_vars: Any, mesh: jax.sharding.Mesh, batch_size: int = 64, keep: int | None = None
) -> FeatureSet:
    """uint8 (N, H, W, 3) images (e.g. `samples.npz`'s arr_0, read by every process) -> FeatureSet, in batches
    sharded over the mesh. `keep` caps the pool features kept (None: all, as precision / recall of samples needs)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"Expected uint8 images (N, H, W, 3) as the ADM layout, got {images.dtype} {images.shape}.")
    devices = jax.device_count()
    batch_size = -(-batch_size // devices) * devices
    features = FeatureAccumulator(inception_vars, keep)
    with jax.set_mesh(mesh):
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            padded, _ = sh.pad_batch(chunk, batch_size)
            local = sh.process_local(padded)  # every process read the file
            sharded = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 4), local)
            features.add(sharded, np.arange(batch_size) < len(chunk))
    return features.result()


def eval_split_features(
    data_config: Any, batch_size: int, mesh: jax.sharding.Mesh, inception_vars: Any, keep: int | None = None
) -> FeatureSet:
    """The features of a data config's eval split (eval transform), each process reading its own shard."""
    accumulator = FeatureAccumulator(inception_vars, keep)
    with jax.set_mesh(mesh):
        for batch in pipeline.make_eval_iterator(data_config, batch_size):
            images = np.round(batch["image"] * 255).astype(np.uint8)
            sharded = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 4), images)
            accumulator.add(sharded, jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 1), batch["mask"]))
    return accumulator.result()


@dataclasses.dataclass(frozen=True)
class Reference:
    """Reference statistics: pool (mu, sigma), spatial (mu_s, sigma_s; None when the file has none) and the
    pool features of reference images (None: no precision / recall)."""

    path: str
    sha256: str
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None
    sigma_s: np.ndarray | None
    pool_features: np.ndarray | None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_reference(path: str, inception_vars: Any, mesh: jax.sharding.Mesh, batch_size: int = 64) -> Reference:
    """Reads an ADM reference batch or our reference statistics; ADM's `arr_0` images go through the network
    (once per evaluation, as ADM does) for precision / recall."""
    mu, sigma = fid.load_statistics(path)  # names a missing or foreign file
    with np.load(path) as data:
        keys = set(data.keys())
        mu_s = data["mu_s"].astype(np.float64) if "mu_s" in keys else None
        sigma_s = data["sigma_s"].astype(np.float64) if "sigma_s" in keys else None
        if (mu_s is None) != (sigma_s is None):
            raise ValueError(f"{path!r} holds only one of mu_s / sigma_s: the spatial (sFID) statistics are broken.")
        if mu_s is not None and mu_s.shape != (inception.SPATIAL_FEATURES,):
            raise ValueError(f"{path!r}: mu_s has shape {mu_s.shape}, not the ({inception.SPATIAL_FEATURES},) of sFID.")
        pool_features = data["pool_features"].astype(np.float32) if "pool_features" in keys else None
        images = data["arr_0"] if pool_features is None and "arr_0" in keys else None
    if images is not None:
        pool_features = image_set_features(images, inception_vars, mesh, batch_size).pool_features
    if pool_features is not None and pool_features.shape[1:] != (inception.POOL_FEATURES,):
        raise ValueError(f"{path!r}: pool_features of shape {pool_features.shape}, not (N, 2048).")
    return Reference(path, file_sha256(path), mu, sigma, mu_s, sigma_s, pool_features)


def write_reference(path: str, features: FeatureSet, **extra: np.ndarray) -> None:
    """Reference statistics in the ADM keys (mu, sigma, mu_s, sigma_s) plus up to 10k pool features."""
    mu, sigma = features.pool.mean_and_covariance()
    mu_s, sigma_s = features.spatial.mean_and_covariance()
    fid.save_statistics(
        path, mu, sigma, mu_s=mu_s, sigma_s=sigma_s, pool_features=features.pool_features[:MAX_REFERENCE_FEATURES],
        num_images=np.asarray(features.pool.count), **extra,
    )  # fmt: skip


def scores_against(samples: FeatureSet, reference: Reference, name=lambda key: key) -> dict[str, Any]:
    """gFID, sFID, IS, precision, recall of `samples` (the ones the reference allows) and the protocol.
    `name(key)` labels Inception-based keys (e.g. `_random_inception`)."""
    results: dict[str, Any] = {
        name("gfid"): fid.frechet_distance(*samples.pool.mean_and_covariance(), reference.mu, reference.sigma),
        name("is"): scores.adm_inception_score(samples.logits, IS_SPLIT_SIZE),
        "num_images": float(samples.pool.count),
    }
    if reference.mu_s is not None:
        results[name("sfid")] = fid.frechet_distance(
            *samples.spatial.mean_and_covariance(), reference.mu_s, reference.sigma_s
        )
    if reference.pool_features is not None:
        precision, recall = precision_recall.precision_recall(reference.pool_features, samples.pool_features)
        results[name("precision")], results[name("recall")] = precision, recall
    results["protocol"] = {
        **PROTOCOL,
        "num_samples": int(samples.pool.count),
        "reference": os.path.abspath(reference.path),
        "reference_sha256": reference.sha256,
        "num_reference_features": None if reference.pool_features is None else len(reference.pool_features),
    }
    return results
