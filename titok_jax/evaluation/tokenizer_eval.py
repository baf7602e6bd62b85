"""Tokenizer and sample evaluation inside the sharded JAX program: rFID, IS, codebook, PSNR / SSIM / MSE, gFID.

rFID protocol (spec): eval split, shorter side to size + center crop, reconstructions clamped to
[0, 1] and rounded to /255, Inception pool features of reconstructions against those of the
originals (same pass). Batches are global and sharded over (data, fsdp); the eval set is padded to
whole batches and `mask` drops the padding and undecodable images, so each real image counts once.
Without an Inception weight file the network has random weights (fixed seed): the metrics are then
named `*_random_inception` and only comparable with each other.

`evaluate_token_counts` scores a variable-length tokenizer (TiTok.token_dropout) decoding only the first k
tokens, for several k in one pass: each batch is encoded once and the real images' Inception features are
shared by every k, so the k = K entry equals `evaluate_tokenizer`'s numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
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
from titok_jax.models.titok import TiTok, check_prefix_lengths
from titok_jax.sharding import to_host

METRICS = ("rfid", "is", "codebook", "psnr", "ssim", "mse")
PIXEL_METRICS = ("psnr", "ssim", "mse")  # per-image scores, averaged over the real images
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


def _reconstruction_scores(inception_vars: Any, reconstructions: jax.Array, images: jax.Array, metrics) -> dict:
    """The per-image scores and Inception outputs of rounded reconstructions (both passes score through here)."""
    out = {"reconstructions": reconstructions}
    if "mse" in metrics:
        out["mse"] = jnp.mean(jnp.square(reconstructions - images), axis=(1, 2, 3))
    if "psnr" in metrics:
        out["psnr"] = scores.psnr(reconstructions, images)
    if "ssim" in metrics:
        out["ssim"] = scores.ssim(reconstructions, images)
    if "rfid" in metrics or "is" in metrics:
        out["pool"], out["logits"] = inception.inception_features(inception_vars, reconstructions)
    return out


def _rounded(pixels: jax.Array) -> jax.Array:
    return jnp.round(jnp.clip(pixels, 0.0, 1.0) * 255.0) / 255.0  # the protocol's uint8 round trip


@functools.partial(jax.jit, static_argnames=("reconstruct", "encode", "metrics"))
def _tokenizer_batch(
    reconstruct: Any, encode: Any, params: Any, aux: Any, inception_vars: Any, images: jax.Array, metrics
):
    out = _reconstruction_scores(inception_vars, _rounded(reconstruct(params, images, aux)), images, metrics)
    if "rfid" in metrics or "is" in metrics:
        out["real_pool"], _ = inception.inception_features(inception_vars, images)
    if "codebook" in metrics:
        out["indices"] = encode(params, images)
    return out


@functools.partial(jax.jit, static_argnames=("model", "metrics"))
def _encode_batch(model: TiTok, params: Any, inception_vars: Any, images: jax.Array, metrics):
    """The latents every prefix decodes from, and what does not depend on k (real features, code ids)."""
    latents, info = model.apply(params, images, sample_posterior=False, method=TiTok.encode)
    out = {"latents": latents}
    if "rfid" in metrics or "is" in metrics:
        out["real_pool"], _ = inception.inception_features(inception_vars, images)
    if "codebook" in metrics:
        out["indices"] = info["indices"].astype(jnp.int32)
    return out


@functools.partial(jax.jit, static_argnames=("model", "metrics"))
def _prefix_batch(
    model: TiTok, params: Any, inception_vars: Any, latents: jax.Array, images: jax.Array, num_kept: jax.Array, metrics
):
    # num_kept is traced: one compile (Inception included) for every k.
    kept = jnp.full((images.shape[0],), num_kept, jnp.int32)
    decoded = model.apply(params, latents, kept, method=TiTok.decode_prefix)
    return _reconstruction_scores(inception_vars, _rounded(decoded), images, metrics)


def _checked_metrics(metrics: Sequence[str], model: TiTok) -> tuple[str, ...]:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown metrics {unknown}; valid: {', '.join(METRICS)}.")
    metrics = tuple(m for m in METRICS if m in metrics)
    if "codebook" in metrics and model.quantize_mode == "vae":
        metrics = tuple(m for m in metrics if m != "codebook")  # a VAE has no codes
    return metrics


class _Running:
    """The running sums of one reconstruction over the pass; the real images' statistics live beside it."""

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size
        self.fake = RunningStatistics(inception.POOL_FEATURES)
        self.logits: list[np.ndarray] = []
        self.sums = dict.fromkeys(PIXEL_METRICS, 0.0)
        self.code_counts: np.ndarray | None = None

    def update(self, out: dict[str, jax.Array], mask: np.ndarray, indices: np.ndarray | None) -> None:
        for key in PIXEL_METRICS:
            if key in out:
                self.sums[key] += float(np.sum(to_host(out[key])[mask]))
        if "pool" in out:
            self.fake.update(out["pool"], mask)
            self.logits.append(to_host(out["logits"])[mask])
        if indices is not None:
            counts = np.bincount(indices[mask].reshape(-1), minlength=self.codebook_size)
            self.code_counts = counts if self.code_counts is None else self.code_counts + counts

    def results(
        self, metrics: tuple[str, ...], count: int, real: RunningStatistics, real_inception: bool
    ) -> dict[str, float]:
        results: dict[str, float] = {"num_images": float(count)}
        for key in PIXEL_METRICS:
            if key in metrics:
                results[key] = self.sums[key] / count
        if "rfid" in metrics:
            results[metric_name("rfid", real_inception)] = fid.frechet_distance(
                *self.fake.mean_and_covariance(), *real.mean_and_covariance()
            )
        if "is" in metrics:
            mean, std = scores.inception_score(np.concatenate(self.logits), splits=min(10, count))
            results[metric_name("is", real_inception)] = mean
            results[metric_name("is_std", real_inception)] = std
        if "codebook" in metrics:
            counts = self.code_counts
            results["codebook_usage"], results["codebook_entropy_bits"] = scores.codebook_usage_and_entropy(counts)
            results["codebook_perplexity"] = 2.0 ** results["codebook_entropy_bits"]
            results["dead_codes"] = float(np.sum(np.asarray(counts) == 0))  # codes no evaluated image used
        return results


def _eval_batches(
    data_config: ml_collections.ConfigDict, batch_size: int, mesh: jax.sharding.Mesh, max_images: int, progress: bool
) -> Iterator[tuple[jax.Array, np.ndarray]]:
    """(global images, host mask) of the eval split's first `max_images` images in whole batches (0: all);
    iterate it under `jax.set_mesh(mesh)`."""
    num_batches = -(-max_images // batch_size) if max_images > 0 else None
    batches = pipeline.make_eval_iterator(data_config, batch_size)
    total = min(len(batches), num_batches) if num_batches is not None else len(batches)
    for index, batch in enumerate(logs.bar(batches, "evaluate", total=total, unit="batch", enabled=progress)):
        if num_batches is not None and index >= num_batches:
            break
        images = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 4), batch["image"])
        mask = to_host(jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 1), batch["mask"]))
        yield images, mask.astype(bool)


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
    metrics = _checked_metrics(metrics, model)
    real, running, count = RunningStatistics(inception.POOL_FEATURES), _Running(model.codebook_size), 0
    with jax.set_mesh(mesh):
        for images, mask in _eval_batches(data_config, batch_size, mesh, max_images, progress):
            out = _tokenizer_batch(reconstruct, encode, params, aux, inception_vars, images, metrics)
            count += int(mask.sum())
            if "real_pool" in out:
                real.update(out["real_pool"], mask)
            running.update(out, mask, to_host(out["indices"]) if "indices" in out else None)
    if count == 0:
        raise ValueError("The eval split holds no usable images.")
    return running.results(metrics, count, real, real_inception)


@dataclasses.dataclass(frozen=True)
class TokenCountResults:
    """`evaluate_token_counts`' output: the metrics per prefix length, and a few eval images decoded at each."""

    by_num_tokens: dict[int, dict[str, float]]  # k -> what evaluate_tokenizer reports, from the first k tokens
    originals: np.ndarray  # float (N, H, W, 3): the first real images of the first batch
    decoded: dict[int, np.ndarray]  # k -> those images decoded from their first k tokens


def evaluate_token_counts(
    model: TiTok,
    params: Any,
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    inception_vars: Any,
    real_inception: bool,
    token_counts: Sequence[int],
    metrics: Sequence[str] = METRICS,
    max_images: int = 0,
    progress: bool = False,
    grid_images: int = 4,
) -> TokenCountResults:
    """One pass over the eval split scoring a variable-length tokenizer (model.token_dropout) that decodes only
    the first k tokens, for each k of `token_counts`: the metrics of `evaluate_tokenizer` per k (the codebook
    statistics count the k kept codes), and the first `grid_images` real images decoded at each k."""
    check_prefix_lengths(model, token_counts, "token_counts", allow_full=False)
    metrics = _checked_metrics(metrics, model)
    counts = tuple(sorted(set(int(k) for k in token_counts)))
    real, count = RunningStatistics(inception.POOL_FEATURES), 0
    running = {k: _Running(model.codebook_size) for k in counts}
    originals, decoded = None, {}
    with jax.set_mesh(mesh):
        for images, mask in _eval_batches(data_config, batch_size, mesh, max_images, progress):
            encoded = _encode_batch(model, params, inception_vars, images, metrics)
            count += int(mask.sum())
            if "real_pool" in encoded:
                real.update(encoded["real_pool"], mask)
            indices = to_host(encoded["indices"]) if "indices" in encoded else None
            first = originals is None
            if first:
                originals = to_host(images)[mask][:grid_images]
            for k in counts:
                out = _prefix_batch(model, params, inception_vars, encoded["latents"], images, jnp.int32(k), metrics)
                running[k].update(out, mask, None if indices is None else indices[:, :k])
                if first:
                    decoded[k] = to_host(out["reconstructions"])[mask][:grid_images]
    if count == 0:
        raise ValueError("The eval split holds no usable images.")
    by_num_tokens = {k: running[k].results(metrics, count, real, real_inception) for k in counts}
    return TokenCountResults(by_num_tokens, originals, decoded)
