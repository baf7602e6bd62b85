"""One optimisation step of any recipe: loss -> gradients (accumulated) -> optimizer -> EMA -> recipe hooks.

`train_step` is module-level and pure; the loop jits it once per recipe phase with the state donated.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any

import jax
import optax

from titok_jax import optim
from titok_jax.train.accumulate import accumulate
from titok_jax.train.state import TrainState


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    frozen: dict[str, Any],
    *,
    recipe: Any,
    phase: Hashable,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of `recipe` (see recipes.Recipe for the hooks it calls).

    `phase` (static) is the recipe's step variant, e.g. whether the GAN is on: the loop compiles one step per
    phase and switches between them, instead of a traced lax.cond (which XLA:CPU ran ~7x slower) or computing
    a discarded update on every step.
    """
    rng = jax.random.fold_in(jax.random.PRNGKey(recipe.seed), state.step)
    context = recipe.step_context(state, frozen, phase)

    def grad_fn(microbatch, key):
        grads, (metrics, outputs) = jax.grad(recipe.loss, has_aux=True)(state.params, microbatch, key, context)
        return grads, metrics, outputs

    grads, metrics, outputs = accumulate(grad_fn, batch, rng, recipe.grad_accum_steps)
    updates, opt_state = recipe.optimizer.update(grads, state.opt_state, state.params)
    state, params, metrics = recipe.before_apply(state, state.params, metrics)
    params = optax.apply_updates(params, updates)
    decay = optim.ema_decay(state.step, recipe.ema_decay, recipe.ema_warmup)
    metrics.update(grad_norm=optax.tree.norm(grads), learning_rate=recipe.learning_rate(state.step))
    state, extra_metrics = recipe.extra_updates(state, batch, outputs, phase)
    metrics.update(extra_metrics)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=optim.ema_update(state.ema_params, params, decay),
    )
    return new_state, metrics


def make_step_fns(recipe: Any, shardings: Any) -> dict[Hashable, Any]:
    """{phase: jitted train step} for each of the recipe's phases; the state is donated (updated in place)."""
    return {
        phase: jax.jit(
            functools.partial(train_step, recipe=recipe, phase=phase),
            in_shardings=(shardings, None, None),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        for phase in recipe.phases
    }
