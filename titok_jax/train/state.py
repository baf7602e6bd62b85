"""The training state every recipe carries through the driver loop."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


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
