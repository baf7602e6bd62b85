"""Config -> recipe and the frozen weights its step needs."""

from __future__ import annotations

from typing import Any

import ml_collections

from titok_jax import optim
from titok_jax.models.titok import titok_from_config
from titok_jax.train import recipes, teacher


def build_recipe(config: ml_collections.ConfigDict) -> tuple[recipes.TokenizerRecipe, dict[str, Any]]:
    """-> (recipe, frozen weights). Reads weight files, so call it before compiling anything."""
    model = titok_from_config(config.model)
    stage = config.recipe
    frozen_prefixes = recipes.STAGE2_FROZEN if stage == "two_stage_2" else ()
    frozen_fn = (lambda params: optim.trainable_mask(params, frozen_prefixes, negate=True)) if frozen_prefixes else None
    common = dict(
        model=model,
        optimizer=optim.make_optimizer(config.optimizer, config.total_steps, frozen=frozen_fn),
        learning_rate=optim.learning_rate_schedule(config.optimizer, config.total_steps),
        seed=config.seed,
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.ema.decay,
        ema_warmup=config.ema.warmup,
        quantizer_weight=config.losses.quantizer_weight,
        kl_weight=config.losses.kl_weight,
    )
    frozen: dict[str, Any] = {}
    if stage == "two_stage_1":
        teacher_module, frozen["teacher"] = teacher.load_teacher(config.teacher, model.image_size, config.seed)
        return recipes.Stage1Recipe(**common, teacher=teacher_module), frozen
    if stage in ("two_stage_2", "single_stage"):
        recipe = recipes.PixelRecipe(
            **common,
            reconstruction_weight=config.losses.reconstruction_weight,
            freeze_encoder=stage == "two_stage_2",
        )
        return recipe, frozen
    raise ValueError(f"Unknown recipe {stage!r}; valid recipes: two_stage_1, two_stage_2, single_stage.")
