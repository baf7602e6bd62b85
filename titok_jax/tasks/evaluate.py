"""Evaluations of trained runs and sample sets: rFID / IS / codebook / PSNR / SSIM of a tokenizer workdir,
gFID / IS of a generator workdir or a samples.npz, and reference statistics of a data split."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers

from titok_jax import files, recipes
from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.evaluation import fid, scores, tokenizer_eval
from titok_jax.evaluation.statistics import RunningStatistics
from titok_jax.inference.samples import write_samples
from titok_jax.models import inception
from titok_jax.tasks import runs


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    metrics: list[str],
    inception_weights: str = "",
    max_images: int = 0,
) -> dict[str, float]:
    """Metrics of the newest checkpoint (EMA params) of a tokenizer workdir; also written to WORKDIR/eval/."""
    module = recipes.validate(config)
    if module.ARTIFACT != recipes.TOKENIZER:
        raise ValueError("A generator workdir is scored by evaluate_generator (needs --reference_statistics).")
    results, step = module.evaluate_workdir(config, workdir, metrics, inception_weights, max_images)
    write_results(workdir, step, results)
    return results


def write_results(workdir: str, step: int, results: dict[str, float]) -> None:
    """WORKDIR/eval/step_S.json and TensorBoard scalars eval/NAME, from process 0."""
    files.write_eval_results(workdir, step, results)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    writer.flush()


def evaluate_generator(
    config: ml_collections.ConfigDict,
    workdir: str,
    reference: str,
    inception_weights: str = "",
    num_images: int = 50_000,
    batch_size: int = 64,
) -> dict[str, float]:
    """gFID / IS straight from a generator workdir: samples `num_images` (balanced classes) into
    WORKDIR/samples/step_S, scores them against `reference`, writes WORKDIR/eval/step_S.json."""
    fid.load_statistics(reference)  # a missing reference fails before sampling
    generator = runs.load_generator(config, workdir)
    step = int(generator.metadata["step"])
    output = os.path.join(workdir, "samples", f"step_{step}")
    write_samples(generator, num_images, output, batch_size=batch_size)
    results = evaluate_samples(os.path.join(output, "samples.npz"), reference, inception_weights)
    write_results(workdir, step, results)
    return results


def reference_statistics(config: ml_collections.ConfigDict, output: str, inception_weights: str) -> dict[str, Any]:
    """Writes mu / sigma of the Inception pool features of config.data's eval split (eval transform)."""
    recipes.validate(config)
    variables, real = tokenizer_eval.load_inception(inception_weights)
    mesh = sh.make_mesh(**config.mesh)
    stats = RunningStatistics(inception.POOL_FEATURES)
    with jax.set_mesh(mesh):
        for batch in pipeline.make_eval_iterator(config.data, config.eval_batch_size):
            images = np.round(batch["image"] * 255).astype(np.uint8)
            sharded = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 4), images)
            mask = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 1), batch["mask"])
            stats.update(tokenizer_eval.pool_and_logits(variables, sharded)[0], mask)
    mu, sigma = stats.mean_and_covariance()
    fid.save_statistics(output, mu, sigma, num_images=np.asarray(stats.count), real_inception=np.asarray(real))
    return {"num_images": stats.count, "output": output, "real_inception": real}


def evaluate_samples(samples: str, reference: str, inception_weights: str, batch_size: int = 64) -> dict[str, float]:
    """gFID (against reference statistics) and IS of a samples.npz."""
    mu_ref, sigma_ref = fid.load_statistics(reference)
    with np.load(samples) as data:
        if "arr_0" not in data:
            raise ValueError(f"{samples!r} has no arr_0: expected titok_jax.sample's samples.npz (ADM layout).")
        images = data["arr_0"]
    variables, real = tokenizer_eval.load_inception(inception_weights)
    stats, logits = tokenizer_eval.image_set_statistics(images, variables, sh.make_mesh(-1, 1, 1), batch_size)
    mean, std = scores.inception_score(logits, splits=min(10, len(logits)))
    name = lambda key: tokenizer_eval.metric_name(key, real)  # noqa: E731
    return {
        name("gfid"): fid.frechet_distance(*stats.mean_and_covariance(), mu_ref, sigma_ref),
        name("is"): mean,
        name("is_std"): std,
        "num_images": float(len(images)),
    }
