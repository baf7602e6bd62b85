"""Evaluations of trained runs and sample sets: rFID / IS / codebook / PSNR / SSIM of a tokenizer workdir, the
ADM suite (gFID, sFID, IS, precision, recall) of a generator workdir or a samples.npz, and reference statistics
of a data split (in the ADM reference keys)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers
from PIL import Image

from titok_jax import files, recipes
from titok_jax import sharding as sh
from titok_jax.convert.inception import PARAMS_FILENAME, source_of
from titok_jax.evaluation import adm, fid, prefix_plots, tokenizer_eval
from titok_jax.inference.generator import Generator
from titok_jax.inference.samples import write_samples
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


TOKEN_COUNTS_SUFFIX = "_token_counts"  # WORKDIR/eval/step_S_token_counts{.json,.png,_grid.png}


def parse_token_counts(values: Sequence[str | int]) -> list[int]:
    """--token_counts=1,2,4,... (a list flag's strings) -> ints; a non-integer is a one-line ValueError."""
    counts = []
    for value in values:
        try:
            counts.append(int(value))
        except ValueError:
            raise ValueError(
                f"--token_counts: {value!r} is not a whole number; give token counts like --token_counts=1,2,4,8,16."
            ) from None
    return counts


def evaluate_token_counts(
    config: ml_collections.ConfigDict,
    workdir: str,
    token_counts: Sequence[str | int],
    metrics: list[str],
    inception_weights: str = "",
    max_images: int = 0,
    grid_images: int = 4,
) -> dict[str, Any]:
    """The metrics of a variable-length tokenizer workdir's newest checkpoint (EMA params) decoding only its
    first k tokens, for each k of `token_counts`. Writes (process 0) WORKDIR/eval/step_S_token_counts.json
    ({"step", "token_counts", "by_num_tokens": {"k": {metric: value}}, "plot", "grid"}), the quality-vs-k plot
    step_S_token_counts.png, the grid step_S_token_counts_grid.png (a row per image: the original, then k
    ascending) and TensorBoard scalars eval/NAME_k{k} with both pictures; returns what the JSON holds."""
    module = recipes.validate(config)
    if module.ARTIFACT != recipes.TOKENIZER:
        raise ValueError("--token_counts evaluates a tokenizer workdir; this config trains a generator.")
    counts = parse_token_counts(token_counts)
    scored, step = module.evaluate_token_counts(
        config, workdir, counts, metrics, inception_weights, max_images, grid_images
    )
    by_num_tokens = scored.by_num_tokens
    plot = prefix_plots.quality_plot(by_num_tokens, title=f"{os.path.basename(os.path.normpath(workdir))} step {step}")
    grid = prefix_plots.prefix_grid(scored.originals, scored.decoded)
    plot_path = files.eval_path(workdir, step, TOKEN_COUNTS_SUFFIX + ".png")
    grid_path = files.eval_path(workdir, step, TOKEN_COUNTS_SUFFIX + "_grid.png")
    results: dict[str, Any] = {
        "step": step,
        "token_counts": sorted(by_num_tokens),
        "by_num_tokens": {str(k): values for k, values in by_num_tokens.items()},  # JSON keys are strings
        "plot": plot_path,
        "grid": grid_path,
    }
    results["results_file"] = files.write_eval_results(workdir, step, results, TOKEN_COUNTS_SUFFIX + ".json")
    if jax.process_index() == 0:
        Image.fromarray(plot).save(plot_path)
        Image.fromarray(grid).save(grid_path)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    scalars = {f"eval/{name}_k{k}": value for k, values in by_num_tokens.items() for name, value in values.items()}
    writer.write_scalars(step, scalars)
    writer.write_images(step, {"eval/quality_by_num_tokens": plot[None], "eval/decoded_by_num_tokens": grid[None]})
    writer.flush()
    return results


def write_results(workdir: str, step: int, results: dict[str, Any]) -> None:
    """WORKDIR/eval/step_S.json (everything, the protocol too) and TensorBoard scalars eval/NAME, from process 0."""
    files.write_eval_results(workdir, step, results)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items() if isinstance(v, int | float)})
    writer.flush()


def evaluate_generator(
    config: ml_collections.ConfigDict,
    workdir: str,
    reference: str,
    inception_weights: str = "",
    num_images: int = 50_000,
    batch_size: int = 64,
) -> dict[str, float]:
    """The ADM suite straight from a generator workdir: samples `num_images` (balanced classes) into
    WORKDIR/samples/step_S, scores them against `reference`, writes WORKDIR/eval/step_S.json."""
    fid.load_statistics(reference)  # a missing reference fails before sampling
    generator = runs.load_generator(config, workdir)
    step = int(generator.metadata["step"])
    output = os.path.join(workdir, "samples", f"step_{step}")
    results = score_generator(generator, reference, inception_weights, num_images, batch_size, output)
    write_results(workdir, step, results)
    return results


def evaluate_generator_path(
    path: str,
    reference: str,
    tokenizer: str = "",
    inception_weights: str = "",
    num_images: int = 50_000,
    batch_size: int = 64,
    output_dir: str = "",
) -> dict[str, Any]:
    """The ADM suite of anything Generator.load reads (a generator bundle, an official generator hub directory
    with `tokenizer`): samples into `output_dir` (default ./samples_NAME; the source is never written to)."""
    fid.load_statistics(reference)  # a missing reference fails before loading or sampling
    generator = Generator.load(path, tokenizer=tokenizer or None)
    output_dir = output_dir or os.path.join(os.getcwd(), f"samples_{os.path.basename(os.path.normpath(path))}")
    return score_generator(generator, reference, inception_weights, num_images, batch_size, output_dir)


def score_generator(
    generator: Generator, reference: str, inception_weights: str, num_images: int, batch_size: int, output_dir: str
) -> dict[str, Any]:
    """`num_images` class-balanced samples into `output_dir`, scored by the ADM suite; the protocol names the
    sampler settings."""
    write_samples(generator, num_images, output_dir, batch_size=batch_size)
    results = evaluate_samples(os.path.join(output_dir, "samples.npz"), reference, inception_weights, batch_size)
    results["protocol"]["sampler"] = dataclasses.asdict(generator.settings)
    return results


def reference_statistics(config: ml_collections.ConfigDict, output: str, inception_weights: str) -> dict[str, Any]:
    """Writes the ADM reference keys (mu / sigma of the pool features, mu_s / sigma_s of the sFID features) and
    the pool features of up to 10k images (precision / recall) of config.data's eval split (eval transform)."""
    recipes.validate(config)
    variables, real = tokenizer_eval.load_inception(inception_weights)
    mesh = sh.make_mesh(**config.mesh)
    features = adm.eval_split_features(config.data, config.eval_batch_size, mesh, variables, adm.MAX_REFERENCE_FEATURES)
    adm.write_reference(output, features, real_inception=np.asarray(real))
    return {"num_images": features.pool.count, "output": output, "real_inception": real}


def inception_protocol(inception_weights: str) -> dict[str, str]:
    """Which Inception weights scored a set: the file and its sha256, or the random network."""
    if not inception_weights:
        return {"inception_weights": f"random (seed {tokenizer_eval.INCEPTION_SEED}): not comparable with papers"}
    path = os.path.join(inception_weights, PARAMS_FILENAME) if os.path.isdir(inception_weights) else inception_weights
    protocol = {"inception_weights": os.path.abspath(path), "inception_sha256": adm.file_sha256(path)}
    source = source_of(path)
    if source is not None:
        protocol.update(inception_source=source["source"], inception_source_sha256=source["source_sha256"])
    return protocol


def evaluate_samples(samples: str, reference: str, inception_weights: str, batch_size: int = 64) -> dict[str, Any]:
    """The ADM suite of a samples.npz (arr_0 uint8 (N, H, W, 3)) against a reference: gFID and IS always, sFID
    when the reference has mu_s / sigma_s, precision / recall when it has reference images or pool features."""
    fid.load_statistics(reference)  # a missing or foreign reference fails before any compile
    with np.load(samples) as data:
        if "arr_0" not in data:
            raise ValueError(f"{samples!r} has no arr_0: expected titok_jax.sample's samples.npz (ADM layout).")
        images = data["arr_0"]
    variables, real = tokenizer_eval.load_inception(inception_weights)
    mesh = sh.make_mesh(-1, 1, 1)
    features = adm.image_set_features(images, variables, mesh, batch_size)
    results = adm.scores_against(
        features, adm.load_reference(reference, variables, mesh, batch_size),
        name=lambda key: tokenizer_eval.metric_name(key, real),
    )  # fmt: skip
    results["protocol"].update(inception_protocol(inception_weights), samples=os.path.abspath(samples))
    return results
