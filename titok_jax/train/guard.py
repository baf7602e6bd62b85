"""The non-finite guard: a diverged run stops before it saves, naming the first bad step and metric.

Each step's guarded metrics (every `*loss` and `grad_norm`) update, on device, the first step at which each
went non-finite; the loop reads that only where it already syncs (log steps) and before every save, so the
guard adds no host sync per step and a non-finite state is never written over the good checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NONE = -1  # "finite so far"


class NonFiniteError(RuntimeError):
    """A training metric or the parameters went non-finite; the message names the step and the metric."""


def guarded(name: str) -> bool:
    return name.endswith("loss") or name == "grad_norm"


def start(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A tracker for the guarded metrics of a step's metrics: {name: first non-finite step or NONE}."""
    return {name: jnp.asarray(NONE, jnp.int32) for name in metrics if guarded(name)}


@jax.jit
def track(tracker: dict[str, jax.Array], metrics: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
    """Records `step` (the step count after the update, as checkpoints number it) for each guarded metric that is non-finite now and was finite before."""
    return {
        name: jnp.where((first == NONE) & ~jnp.all(jnp.isfinite(metrics[name])), step, first).astype(jnp.int32)
        for name, first in tracker.items()
    }


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def all_finite(tree) -> bool:
    """Whether every float leaf of `tree` is finite (one fused reduction on device, one scalar to the host)."""
    return bool(jax.device_get(_all_finite(tree)))


def check(tracker: dict[str, jax.Array], last_good: int | None, workdir: str) -> None:
    """Raises NonFiniteError naming the first non-finite step and metric, if any."""
    firsts = {name: int(step) for name, step in jax.device_get(tracker).items() if int(step) != NONE}
    if firsts:
        name = min(firsts, key=lambda n: (firsts[n], n))
        raise NonFiniteError(_message(f"{name} is not finite at step {firsts[name]}", last_good, workdir))


def refuse_to_save(step: int, last_good: int | None, workdir: str) -> None:
    raise NonFiniteError(_message(f"the parameters are not finite at step {step}", last_good, workdir))


def _message(what: str, last_good: int | None, workdir: str) -> str:
    kept = (
        f"the last good checkpoint (all finite) is step {last_good} in {workdir}/checkpoints (rerun to resume from it)"
        if last_good is not None
        else f"no checkpoint was written to {workdir}"
    )
    return (
        f"Training diverged: {what}; stopped without saving it, {kept}. "
        "Lower the learning rate or check the data before resuming."
    )
