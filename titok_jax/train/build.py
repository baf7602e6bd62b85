"""Config -> recipe and the frozen weights its step needs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from titok_jax import losses, optim
from titok_jax.data import pipeline, tokens
from titok_jax.models.discriminator import NLayerDiscriminator
from titok_jax.models.titok import titok_from_config
from titok_jax.train import recipes, teacher

RECIPES = ("two_stage_1", "two_stage_2", "single_stage", "generator")


def build_recipe(config: ml_collections.ConfigDict, random_frozen: bool = False) -> tuple[Any, dict[str, Any]]:
    """-> (recipe, frozen weights). Reads weight files, so call it before compiling anything.

    `random_frozen` draws the frozen networks (VQGAN teacher, perceptual nets) at random instead
    of reading their files: for benchmarks, where only shapes matter."""
    stage = config.recipe
    if stage == "generator":
        from titok_jax.train.generator import build_generator_recipe  # it loads tokenizers through this module

        return build_generator_recipe(config, random_tokenizer=random_frozen)
    model = titok_from_config(config.model)
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
        teacher_config = config.teacher
        if random_frozen:
            teacher_config = teacher_config.copy_and_resolve_references()
            teacher_config.random_init = True
        teacher_module, frozen["teacher"] = teacher.load_teacher(teacher_config, model.image_size, config.seed)
        return recipes.Stage1Recipe(**common, teacher=teacher_module), frozen
    if stage in ("two_stage_2", "single_stage"):
        weights = losses.LossWeights.from_config(config.losses)
        gan = {}
        if config.discriminator.enabled:
            d_fields = {k: v for k, v in config.discriminator.items() if k != "enabled"}
            d_optimizer_config = config.optimizer.copy_and_resolve_references()
            d_optimizer_config.learning_rate = config.optimizer.discriminator_learning_rate
            # Its schedule runs from the first discriminator update, as officially.
            d_steps = max(config.total_steps - weights.discriminator_start, 1)
            gan = dict(
                discriminator=NLayerDiscriminator(**d_fields),
                discriminator_optimizer=optim.make_optimizer(d_optimizer_config, d_steps),
            )
        perceptual = {}
        if weights.perceptual_weight > 0:
            perceptual_loss, frozen["perceptual"] = load_perceptual(config.perceptual, random_frozen)
            perceptual = dict(perceptual_loss=perceptual_loss)
        recipe = recipes.PixelRecipe(
            **common, loss_weights=weights, freeze_encoder=stage == "two_stage_2", **gan, **perceptual
        )
        return recipe, frozen
    raise ValueError(f"Unknown recipe {stage!r}; valid recipes: {', '.join(RECIPES)}.")


def make_data(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, np.ndarray]]:
    """-> (this process's train iterator, its part of the evaluation batch)."""
    if config.recipe != "generator":
        train_iter = pipeline.make_train_iterator(config.data, config.batch_size, seed=config.seed)
        eval_batch = next(iter(pipeline.make_eval_iterator(config.data, config.eval_batch_size)))
        return train_iter, {"image": eval_batch["image"]}
    from titok_jax.train.generator import grid_class_ids

    if config.tokens_dir:
        train_iter = tokens.make_token_train_iterator(
            config.tokens_dir, config.batch_size, config.seed, config.model.num_classes, config.data
        )
    else:  # images, tokenized inside the step
        train_iter = pipeline.make_train_iterator(config.data, config.batch_size, seed=config.seed)
    class_ids = grid_class_ids(config.model.num_classes, jax.device_count())
    local = np.split(class_ids, jax.process_count())[jax.process_index()]
    return train_iter, {"label": local}


def _random_perceptual_params(networks: list[str]) -> dict[str, Any]:
    from titok_jax.models import perceptual

    image = jnp.zeros((1, 32, 32, 3), jnp.float32)
    key = jax.random.PRNGKey(0)
    params = {}
    if "lpips" in networks:
        params["lpips"] = nn.meta.unbox(jax.jit(perceptual.LPIPS().init)(key, image, image))["params"]
    if "convnext" in networks:
        params["convnext"] = nn.meta.unbox(jax.jit(perceptual.ConvNeXtSmall().init)(key, image))["params"]
    return params


def eval_every(config: ml_collections.ConfigDict) -> int:
    """Steps between evaluations: image_every (tokenizers' reconstructions) or sample_every (generator)."""
    return config.sample_every if config.recipe == "generator" else config.image_every


def load_perceptual(config: ml_collections.ConfigDict, random_weights: bool = False) -> tuple[Any, Any]:
    """-> (loss fn(frozen params, x, y), frozen params). Stops clearly when the weights are missing."""
    from titok_jax.convert.perceptual import load_perceptual_params
    from titok_jax.models import perceptual

    if not config.weights and not random_weights:
        raise ValueError(
            "losses.perceptual_weight > 0 needs the perceptual networks' weights: set config.perceptual.weights "
            "to the file made by `python -m titok_jax.convert.perceptual` (LPIPS-VGG and/or ConvNeXt-S), "
            "or set config.losses.perceptual_weight=0."
        )
    weights = perceptual.PerceptualWeights(lpips=config.lpips_weight, convnext=config.convnext_weight)
    needed = [name for name, w in (("lpips", weights.lpips), ("convnext", weights.convnext)) if w > 0]
    params = _random_perceptual_params(needed) if random_weights else load_perceptual_params(config.weights, needed)

    def loss(frozen_params, images, targets):
        return perceptual.perceptual_loss(frozen_params, images, targets, weights)

    return loss, params
