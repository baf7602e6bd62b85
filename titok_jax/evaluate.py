r"""Evaluate a tokenizer checkpoint, a set of samples, or write reference statistics.

  # rFID / IS / codebook / PSNR / SSIM of a tokenizer workdir's newest checkpoint (EMA params) on config.data's eval split
  python -m titok_jax.evaluate --config=experiments/titok_single_stage.py:tiny_vq --workdir=/tmp/titok_tiny \
      [--metrics=rfid,is,codebook,psnr,ssim] [--inception_weights=DIR/inception.msgpack]
  # Reference statistics (mu, sigma of the Inception pool features) of config.data's eval split
  python -m titok_jax.evaluate --config=... --write_reference_statistics=ref.npz --inception_weights=...
  # gFID / IS straight from a generator workdir (samples --num_images, 50 per class for 50k over 1000 classes)
  python -m titok_jax.evaluate --config=experiments/maskgit_generator.py:l32 --workdir=DIR \
      --reference_statistics=VIRTUAL_imagenet256_labeled.npz --inception_weights=... [--num_images=50000]
  # gFID / IS of samples (titok_jax.sample's samples.npz, arr_0 uint8 (N, H, W, 3)) against reference statistics
  python -m titok_jax.evaluate --samples=samples.npz --reference_statistics=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=...

Results print as JSON; a workdir evaluation also writes WORKDIR/eval/step_S.json and TensorBoard
scalars `eval/NAME`. Without --inception_weights the Inception network is random (fixed seed) and the
FID / IS keys say `_random_inception`: fine for smoke tests and tiny runs, not comparable with papers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from clu import metric_writers
from ml_collections import config_flags

from titok_jax import configs, distributed
from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.evaluation import fid, scores, tokenizer_eval
from titok_jax.evaluation.statistics import RunningStatistics
from titok_jax.models import inception
from titok_jax.train.loop import restore_for_inference


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    metrics: list[str],
    inception_weights: str = "",
    max_images: int = 0,
) -> dict[str, float]:
    """Metrics of the newest checkpoint (EMA params) of a tokenizer workdir; also written to WORKDIR/eval/."""
    configs.validate_config(config)
    if config.recipe == "generator":
        raise ValueError("A generator workdir is scored by evaluate_generator (needs --reference_statistics).")
    recipe, frozen, mesh, state, step = restore_for_inference(config, workdir, "point it at a training workdir.")
    variables, real = tokenizer_eval.load_inception(inception_weights)
    frozen = jax.device_put(frozen, sh.replicated(mesh))
    results = tokenizer_eval.evaluate_tokenizer(
        recipe, state.ema_params, frozen, config.data, config.eval_batch_size, mesh, variables, real, metrics,
        max_images,
    )  # fmt: skip
    write_results(workdir, step, results)
    return results


def write_results(workdir: str, step: int, results: dict[str, float]) -> None:
    """WORKDIR/eval/step_S.json and TensorBoard scalars eval/NAME, from process 0."""
    tokenizer_eval.save_results_json(workdir, step, results)
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
    from titok_jax import sample

    fid.load_statistics(reference)  # a missing reference fails before sampling
    summary = sample.sample(config, workdir, num_images, batch_size=batch_size)
    results = evaluate_samples(os.path.join(summary["output_dir"], "samples.npz"), reference, inception_weights)
    write_results(workdir, summary["checkpoint_step"], results)
    return results


def reference_statistics(config: ml_collections.ConfigDict, output: str, inception_weights: str) -> dict[str, Any]:
    """Writes mu / sigma of the Inception pool features of config.data's eval split (eval transform)."""
    configs.validate_config(config)
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


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (the library imports this module)."""
    distributed.define_flags()
    config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant] (workdir / reference modes).")
    flags.DEFINE_string("workdir", None, "A tokenizer training workdir to evaluate.")
    flags.DEFINE_list("metrics", list(tokenizer_eval.METRICS), "Metrics of a workdir evaluation.")
    flags.DEFINE_string("inception_weights", "", "inception.msgpack from titok_jax.convert.inception (else random).")
    flags.DEFINE_integer("num_images", 50_000, "Samples drawn from a generator workdir for gFID.")
    flags.DEFINE_integer("max_images", 0, "Evaluate only the first N eval images (0: all).")
    flags.DEFINE_string("write_reference_statistics", None, "Write mu/sigma of config.data's eval split here.")
    flags.DEFINE_string("samples", None, "A samples.npz (arr_0 uint8 (N, H, W, 3)) to score.")
    flags.DEFINE_string("reference_statistics", None, "Reference mu/sigma .npz for --samples.")


def main(argv):
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()
    if FLAGS.samples:
        if not FLAGS.reference_statistics:
            raise app.UsageError("--samples needs --reference_statistics (an .npz with mu and sigma).")
        result = evaluate_samples(FLAGS.samples, FLAGS.reference_statistics, FLAGS.inception_weights)
    elif FLAGS.config is None:
        raise app.UsageError("Give --config with --workdir or --write_reference_statistics, or --samples.")
    elif FLAGS.write_reference_statistics:
        result = reference_statistics(FLAGS.config, FLAGS.write_reference_statistics, FLAGS.inception_weights)
    elif FLAGS.workdir and FLAGS.config.recipe == "generator":
        if not FLAGS.reference_statistics:
            raise app.UsageError("A generator workdir needs --reference_statistics for gFID.")
        result = evaluate_generator(
            FLAGS.config, FLAGS.workdir, FLAGS.reference_statistics, FLAGS.inception_weights, FLAGS.num_images
        )
    elif FLAGS.workdir:
        result = evaluate_workdir(FLAGS.config, FLAGS.workdir, FLAGS.metrics, FLAGS.inception_weights, FLAGS.max_images)
    else:
        raise app.UsageError("With --config, give --workdir (evaluate) or --write_reference_statistics.")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
