"""Where a run's scalars and images go: TensorBoard always (clu), Weights & Biases when config.logging.wandb
(train/wandb_writer.py). Only process 0 writes either.

Importing this module is light (config validation imports it): clu's writers, which import TensorFlow, are
imported when a writer is made.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import jax
import ml_collections

# config.logging: wandb off by default; project / entity / name as W&B takes them ('' = W&B's default).
DEFAULTS = dict(wandb=False, wandb_project="titok_jax", wandb_entity="", wandb_name="")


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses unknown logging fields, and W&B asked for without the package installed."""
    logging_config = config.get("logging")
    if logging_config is None:
        return
    unknown = sorted(set(logging_config.keys()) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown config.logging fields {unknown}; valid: {sorted(DEFAULTS)}.")
    if logging_config.wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError(
            "config.logging.wandb=True needs the wandb package: pip install wandb "
            "(or leave --config.logging.wandb=False; TensorBoard is always written)."
        )


def make_writer(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """A clu MetricWriter: TensorBoard (just logging on processes > 0), plus W&B on process 0 if asked."""
    from clu import metric_writers

    from titok_jax.train.wandb_writer import WandbWriter

    tensorboard = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    logging_config = config.get("logging") or ml_collections.ConfigDict(DEFAULTS)
    if not logging_config.get("wandb", False) or jax.process_index() > 0:
        return tensorboard
    return metric_writers.MultiWriter([tensorboard, WandbWriter(config, workdir)])
