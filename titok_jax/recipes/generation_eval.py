"""In-training gFID for generators: every config.evaluation.every steps, the EMA generator samples
config.evaluation.num_images class-balanced images (fixed keys, so successive evaluations differ only by what
the model learned) and the ADM suite scores them against config.evaluation.reference (an ADM reference batch or
`evaluate --write_reference_statistics` output), or, when that is empty, against config.data's eval split,
whose statistics are written once to WORKDIR/eval/reference_statistics.npz and read back on resume.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from titok_jax import sharding as sh
from titok_jax.evaluation import adm, tokenizer_eval
from titok_jax.inference.generator import balanced_class_ids
from titok_jax.train.loop import Evaluator
from titok_jax.train.state import TrainState

# config.evaluation of a generator: off by default (50k samples take hours on a pod slice; set `every`).
DEFAULTS = dict(every=0, num_images=50_000, reference="", inception_weights="", batch_size=64)
REFERENCE_FILE = "reference_statistics.npz"


def validate(evaluation: ml_collections.ConfigDict) -> None:
    unknown = sorted(set(evaluation.keys()) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown config.evaluation fields {unknown}; valid: {sorted(DEFAULTS)}.")
    for key in ("every", "num_images", "batch_size"):
        value = evaluation[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "every" else 1):
            raise ValueError(
                f"config.evaluation.{key} must be a {'non-negative' if key == 'every' else 'positive'} int."
            )
    if evaluation.every and evaluation.num_images <= 3:
        raise ValueError("config.evaluation.num_images must be > 3 (precision / recall use k = 3 neighbours).")
    if evaluation.reference and not os.path.isfile(evaluation.reference):
        raise ValueError(
            f"config.evaluation.reference={evaluation.reference!r} does not exist: give an ADM reference batch or "
            "`python -m titok_jax.evaluate --write_reference_statistics` output, or leave it empty to use the "
            "statistics of config.data's eval split."
        )


def gfid_evaluator(
    config: ml_collections.ConfigDict, recipe: Any, frozen: dict[str, Any], mesh: jax.sharding.Mesh, workdir: str
) -> Evaluator:
    """The Evaluator the loop runs (weights and the reference are read here, before anything compiles)."""
    evaluation = config.evaluation
    inception_vars, real = tokenizer_eval.load_inception(evaluation.inception_weights)
    inception_vars = jax.device_put(inception_vars, sh.replicated(mesh))
    batch_size = -(-evaluation.batch_size // jax.device_count()) * jax.device_count()
    reference_path = evaluation.reference or os.path.join(workdir, "eval", REFERENCE_FILE)
    if not evaluation.reference and not os.path.isfile(reference_path):
        logging.info("Computing gFID reference statistics of config.data's eval split -> %s", reference_path)
        features = adm.eval_split_features(config.data, batch_size, mesh, inception_vars, adm.MAX_REFERENCE_FEATURES)
        if jax.process_index() == 0:
            adm.write_reference(reference_path, features)
    reference = adm.load_reference(reference_path, inception_vars, mesh, batch_size)
    tokenizer_params = jax.device_put(frozen["tokenizer"], sh.replicated(mesh))
    class_ids = balanced_class_ids(evaluation.num_images, config.model.num_classes)

    @jax.jit
    def sample_images(params: Any, ids: jax.Array, rng: jax.Array) -> jax.Array:
        images = recipe.decode(tokenizer_params, recipe.sample(params, ids, rng))
        return jnp.round(jnp.clip(images, 0.0, 1.0) * 255).astype(jnp.uint8)

    def run(state: TrainState, step: int) -> dict[str, float]:
        del step
        accumulator = adm.FeatureAccumulator(inception_vars)
        key = jax.random.PRNGKey(config.seed)
        with jax.set_mesh(mesh):
            for index, start in enumerate(range(0, len(class_ids), batch_size)):
                chunk = class_ids[start : start + batch_size]
                padded, _ = sh.pad_batch(chunk, batch_size)
                ids = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 1), sh.process_local(padded))
                images = sample_images(state.ema_params, ids, jax.random.fold_in(key, index))
                accumulator.add(images, np.arange(batch_size) < len(chunk))
        results = adm.scores_against(
            accumulator.result(), reference, name=lambda k: tokenizer_eval.metric_name(k, real)
        )
        results.pop("protocol")  # the loop's summaries are scalars; `evaluate` writes the protocol
        return results

    return Evaluator(every=evaluation.every, run=run)
