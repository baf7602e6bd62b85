r"""Evaluate a tokenizer checkpoint, a set of samples, or write reference statistics.

  # rFID / IS / codebook / PSNR / SSIM / MSE of a tokenizer workdir's newest checkpoint (EMA params) on config.data's eval split
  python -m titok_jax.evaluate --config=experiments/titok_single_stage.py:tiny_vq --workdir=/tmp/titok_tiny \
      [--metrics=rfid,is,codebook,psnr,ssim,mse] [--inception_weights=DIR/inception.msgpack]
  # ... of a variable-length tokenizer (model.token_dropout) decoding only its first k tokens, for each k:
  # WORKDIR/eval/step_S_token_counts.json (by_num_tokens: {"k": {metric: value}}), .png (quality vs k), _grid.png
  python -m titok_jax.evaluate --config=experiments/titok_single_stage.py:tiny_vq_nested --workdir=DIR \
      --token_counts=1,2,4,8,16
  # Reference statistics of config.data's eval split: mu / sigma (pool), mu_s / sigma_s (sFID), pool features
  python -m titok_jax.evaluate --config=... --write_reference_statistics=ref.npz --inception_weights=...
  # The ADM suite (gFID, sFID, IS, precision, recall) straight from a generator workdir (samples --num_images,
  # 50 per class for 50k over 1000 classes) against an ADM reference batch or our reference statistics
  python -m titok_jax.evaluate --config=experiments/maskgit_generator.py:l32 --workdir=DIR \
      --reference_statistics=VIRTUAL_imagenet256_labeled.npz --inception_weights=... [--num_images=50000]
  # ... of a generator bundle or an official generator (+ --tokenizer), sampled into --output
  python -m titok_jax.evaluate --generator=/data/l32_generator_bundle --reference_statistics=... --num_images=50000
  # The ADM suite of samples (titok_jax.sample's samples.npz, arr_0 uint8 (N, H, W, 3))
  python -m titok_jax.evaluate --samples=samples.npz --reference_statistics=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=...

Results print as JSON, with the protocol (network, resize, features, reference and Inception file hashes,
sample count) under "protocol"; a workdir evaluation also writes WORKDIR/eval/step_S.json and TensorBoard
scalars `eval/NAME`. Without --inception_weights the Inception network is random (fixed seed) and the
FID / IS keys say `_random_inception`: fine for smoke tests and tiny runs, not comparable with papers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app

from titok_jax import cli, recipes
from titok_jax.evaluation.tokenizer_eval import METRICS
from titok_jax.tasks import evaluate


@dataclasses.dataclass(frozen=True)
class Options:
    workdir: str | None = cli.option(None, "A tokenizer or generator training workdir to evaluate.")
    metrics: tuple[str, ...] = cli.option(list(METRICS), "Metrics of a tokenizer workdir evaluation.")
    inception_weights: str = cli.option("", "inception.msgpack from titok_jax.convert.inception (else random).")
    num_images: int = cli.option(50_000, "Samples drawn from a generator workdir for gFID.")
    max_images: int = cli.option(0, "Evaluate only the first N eval images (0: all).")
    write_reference_statistics: str | None = cli.option(None, "Write mu/sigma of config.data's eval split here.")
    samples: str | None = cli.option(None, "A samples.npz (arr_0 uint8 (N, H, W, 3)) to score.")
    generator: str | None = cli.option(
        None, "A generator bundle or official generator (hub dir; with --tokenizer) to sample and score."
    )
    tokenizer: str = cli.option("", "--generator: the tokenizer an official generator models.")
    output: str = cli.option("", "--generator: where its samples go (default ./samples_NAME).")
    reference_statistics: str | None = cli.option(
        None,
        "Reference .npz for --samples or a generator: an ADM reference batch (mu, sigma, mu_s, sigma_s, arr_0) "
        "or --write_reference_statistics' output; sFID / precision / recall need their keys.",
    )
    batch_size: int = cli.option(64, "Images per Inception batch (--samples and generator workdirs).")
    token_counts: tuple[str, ...] = cli.option(
        [],
        "A variable-length tokenizer workdir (model.token_dropout): score it decoding only its first k tokens for "
        "each k (e.g. 1,2,4,8,16); writes WORKDIR/eval/step_S_token_counts.json, .png (quality vs k), _grid.png.",
    )


def run(config, options: Options) -> dict[str, Any]:
    if options.token_counts and (options.samples or options.generator or options.write_reference_statistics):
        raise app.UsageError("--token_counts scores a tokenizer workdir: give it with --config and --workdir only.")
    if options.samples:
        if not options.reference_statistics:
            raise app.UsageError("--samples needs --reference_statistics (an .npz with mu and sigma).")
        return evaluate.evaluate_samples(
            options.samples, options.reference_statistics, options.inception_weights, options.batch_size
        )
    if options.generator:
        if not options.reference_statistics:
            raise app.UsageError("--generator needs --reference_statistics (an ADM reference batch or ours).")
        return evaluate.evaluate_generator_path(
            options.generator, options.reference_statistics, options.tokenizer, options.inception_weights,
            options.num_images, options.batch_size, options.output,
        )  # fmt: skip
    if config is None:
        raise app.UsageError("Give --config with --workdir or --write_reference_statistics, --samples or --generator.")
    if options.write_reference_statistics:
        return evaluate.reference_statistics(config, options.write_reference_statistics, options.inception_weights)
    if not options.workdir:
        raise app.UsageError("With --config, give --workdir (evaluate) or --write_reference_statistics.")
    if recipes.lookup(config).ARTIFACT == recipes.GENERATOR:
        if not options.reference_statistics:
            raise app.UsageError("A generator workdir needs --reference_statistics for gFID.")
        return evaluate.evaluate_generator(
            config, options.workdir, options.reference_statistics, options.inception_weights, options.num_images,
            options.batch_size,
        )  # fmt: skip
    if options.token_counts:
        return evaluate.evaluate_token_counts(
            config, options.workdir, options.token_counts, list(options.metrics), options.inception_weights,
            options.max_images,
        )  # fmt: skip
    return evaluate.evaluate_workdir(
        config, options.workdir, list(options.metrics), options.inception_weights, options.max_images
    )


if __name__ == "__main__":
    cli.main(run, Options, config="optional", distributed=True, config_from="workdir")
