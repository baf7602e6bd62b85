"""The training state every recipe carries through the driver loop, created straight into its shardings."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import ml_collections

from titok_jax import checkpoint
from titok_jax import sharding as sh


@flax.struct.dataclass
class TrainState:
    """step, params, optimizer state and EMA params; GAN recipes add a discriminator.

    `discriminator` is {"params", "opt_state"} and `lecam` holds the EMAs of the
    discriminator's mean real / fake logits; both stay None without a GAN.
    `codebook_usage_ema` is set only for clustering VQ.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    discriminator: Any = None
    lecam: Any = None
    codebook_usage_ema: Any = None  # clustering VQ: EMA of each code's batch frequency


def create_train_state(recipe: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Any, Any, Any]:
    """-> (abstract state with shardings, init fn writing straight into them, shardings)."""
    batch = recipe.example_batch()
    rng = jax.random.PRNGKey(config.seed)
    boxed = jax.eval_shape(recipe.init, rng, batch)
    shardings = sh.logical_shardings(boxed, mesh)
    abstract = checkpoint.abstract_with_shardings(nn.meta.unbox(boxed), shardings)
    init = jax.jit(lambda: nn.meta.unbox(recipe.init(rng, batch)), out_shardings=shardings)
    return abstract, init, shardings
