"""Tokenizer and sample evaluation inside the sharded JAX program: rFID, IS, codebook, PSNR / SSIM, gFID.

rFID protocol (spec): eval split, shorter side to size + center crop, reconstructions clamped to
[0, 1] and rounded to /255, Inception pool features of reconstructions against those of the
originals (same pass). Batches are global and sharded over (data, fsdp); the eval set is padded to
whole batches and `mask` drops the padding and undecodable images, so each real image counts once.
Without an Inception weight file the network has random weights (fixed seed): the metrics are then
named `*_random_inception` and only comparable with each other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from titok_jax import logs
from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.evaluation import fid, scores
from titok_jax.evaluation.statistics import RunningStatistics
from titok_jax.models import inception
from titok_jax.models.titok import TiTok
from titok_jax.sharding import to_host

METRICS = ("rfid", "is", "codebook", "psnr", "ssim")
INCEPTION_SEED = 0


@functools.lru_cache(maxsize=1)
def random_inception_variables(seed: int = INCEPTION_SEED) -> Any:
    """A random FID Inception: He-normal kernels (activations keep their size through ~90 ReLU layers),
    BatchNorm at identity statistics. Drawn with numpy from the abstract shapes: no init compile (~18 s)."""
    images = jax.ShapeDtypeStruct((1, inception.INCEPTION_IMAGE_SIZE, inception.INCEPTION_IMAGE_SIZE, 3), jnp.float32)
    shapes = nn.meta.unbox(jax.eval_shape(inception.FIDInceptionV3().init, jax.random.PRNGKey(seed), images))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            gain = 1.0 if path[-2].key == "fc" else 2.0
            return rng.normal(0.0, np.sqrt(gain / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def load_inception(weights: str) -> tuple[Any, bool]:
    """(Inception variables, whether they are the real FID weights). Empty `weights`: random, labelled."""
    if weights:
        from titok_jax.convert.inception import check_source, load_inception_params

        variables = load_inception_params(weights, setting="config.evaluation.inception_weights")
        check_source(weights)  # converted from another file than pytorch-fid's: named and refused
        return variables, True
    return random_inception_variables(), False


def metric_name(name: str, real_inception: bool) -> str:
    inception_based = ("rfid", "is", "is_std", "gfid", "sfid", "precision", "recall")
    return name if real_inception or name not in inception_based else f"{name}_random_inception"


@functools.partial(jax.jit, static_argnames=("reconstruct", "encode", "metrics"))
def _tokenizer_batch(
    reconstruct: Any, encode: Any, params: Any, aux: Any, inception_vars: Any, images: jax.Array, metrics
):
    reconstructions = jnp.round(reconstruct(params, images, aux) * 255.0) / 255.0
    out = {}
    if "psnr" in metrics:
        out["psnr"] = scores.psnr(reconstructions, images)
    if "ssim" in metrics:
        out["ssim"] = scores.ssim(reconstructions, images)
    if "rfid" in metrics or "is" in metrics:
        out["real_pool"], _ = inception.inception_features(inception_vars, images)
        out["pool"], out["logits"] = inception.inception_features(inception_vars, reconstructions)
    if "codebook" in metrics:
        out["indices"] = encode(params, images)
    return out


def evaluate_tokenizer(
    reconstruct: Callable[[Any, jax.Array, Any], jax.Array],
    encode: Callable[[Any, jax.Array], jax.Array],
    model: TiTok,
    params: Any,
    aux: Any,
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    inception_vars: Any,
    real_inception: bool,
    metrics: Sequence[str] = METRICS,
    max_images: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """One pass over the eval split (its first `max_images` images, whole batches, if > 0) -> {metric: value}
    (see the module docstring for the protocol). `reconstruct(params, images, aux)` -> pixels in [0, 1] is the
    tokenizer's deterministic reconstruction (hashable: a jit static argument); `aux` its other weights (e.g. a
    stage-1 model's VQGAN teacher); `encode(params, images)` -> code ids is the tokenizer's encode path (for the
    codebook statistics; hashable too); `model` names the quantizer and the codebook size."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}; valid: {', '.join(METRICS)}.")
    metrics = tuple(m for m in METRICS if m in metrics)
    if "codebook" in metrics and model.quantize_mode == "vae":
        metrics = tuple(m for m in metrics if m != "codebook")  # a VAE has no codes
    real, fake = RunningStatistics(inception.POOL_FEATURES), RunningStatistics(inception.POOL_FEATURES)
    logits, code_counts, sums, count = [], None, {"psnr": 0.0, "ssim": 0.0}, 0
    num_batches = -(-max_images // batch_size) if max_images > 0 else None
    with jax.set_mesh(mesh):
        batches = pipeline.make_eval_iterator(data_config, batch_size)
        total = min(len(batches), num_batches) if num_batches is not None else len(batches)
        for index, batch in enumerate(logs.bar(batches, "evaluate", total=total, unit="batch", enabled=progress)):
            if num_batches is not None and index >= num_batches:
                break
            images = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 4), batch["image"])
            mask = to_host(jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 1), batch["mask"]))
            out = _tokenizer_batch(reconstruct, encode, params, aux, inception_vars, images, metrics)
            count += int(mask.sum())
            for key in ("psnr", "ssim"):
                if key in out:
                    sums[key] += float(np.sum(to_host(out[key])[mask]))
            if "pool" in out:
                real.update(out["real_pool"], mask)
                fake.update(out["pool"], mask)
                logits.append(to_host(out["logits"])[mask])
            if "indices" in out:
                counts = np.bincount(to_host(out["indices"])[mask].reshape(-1), minlength=model.codebook_size)
                code_counts = counts if code_counts is None else code_counts + counts
    if count == 0:
        raise ValueError("The eval split holds no usable images.")
    results: dict[str, float] = {"num_images": float(count)}
    for key in ("psnr", "ssim"):
        if key in metrics:
            results[key] = sums[key] / count
    if "rfid" in metrics:
        results[metric_name("rfid", real_inception)] = fid.frechet_distance(
            *fake.mean_and_covariance(), *real.mean_and_covariance()
        )
    if "is" in metrics:
        mean, std = scores.inception_score(np.concatenate(logits), splits=min(10, count))
        results[metric_name("is", real_inception)] = mean
        results[metric_name("is_std", real_inception)] = std
    if "codebook" in metrics:
        results["codebook_usage"], results["codebook_entropy_bits"] = scores.codebook_usage_and_entropy(code_counts)
        results["codebook_perplexity"] = 2.0 ** results["codebook_entropy_bits"]
        results["dead_codes"] = float(np.sum(np.asarray(code_counts) == 0))  # codes no evaluated image used
    return results
