"""The console line of a training run: one per log_every, with the speed, the time left and the metrics a
researcher watches first (the full set goes to TensorBoard)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

# Shown first when a recipe reports them; any other metric is in the summaries only.
HEADLINE = (
    "loss",
    "reconstruction_loss",
    "proxy_cross_entropy",
    "quantizer_loss",
    "kl_loss",
    "perceptual_loss",
    "generator_adversarial_loss",
    "discriminator_loss",
    "masked_token_accuracy",
    "token_accuracy",
    "random_order_ratio",
    "codebook_usage",
    "grad_norm",
)


def duration(seconds: float) -> str:
    """'1h02m', '3m05s', '12s'."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclasses.dataclass
class Progress:
    """Formats the progress line of steps [start, total) with `batch_size` images per step."""

    total_steps: int
    batch_size: int
    start_step: int = 0
    started: float = dataclasses.field(default_factory=time.time)

    def line(self, step: int, metrics: Mapping[str, float], window_steps: int, window_seconds: float) -> str:
        rate = window_steps / max(window_seconds, 1e-9)
        left = (self.total_steps - step) / rate if rate > 0 else float("inf")
        width = len(str(self.total_steps))
        parts = [
            f"step {step:>{width}}/{self.total_steps}",
            f"{rate:.2f} steps/s",
            f"{rate * self.batch_size:.0f} img/s",
            f"ETA {duration(left) if left != float('inf') else '?'}",
        ]
        parts += [f"{name} {metrics[name]:.4g}" for name in headline(metrics)]
        return " | ".join(parts)


def headline(metrics: Mapping[str, float], limit: int = 6) -> Sequence[str]:
    """The headline metrics present in `metrics`, in HEADLINE order."""
    return [name for name in HEADLINE if name in metrics][:limit]
