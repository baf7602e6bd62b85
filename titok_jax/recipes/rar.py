"""The RAR recipe (config.recipe "rar"): class-conditional autoregressive modelling over a frozen tokenizer's codes.

Runs on the shared driver loop. Each step gives every example, with probability r(step), its own uniformly random
token order (raster otherwise); tokens, targets and both position tables follow that order (models/rar.py). r is
1 until `randomness_anneal_start`, falls linearly to 0 at `randomness_anneal_end` and stays 0 (the official
`get_rar_random_ratio`); sampling is raster order. The class is dropped (-> null) with probability
`class_dropout`; the loss is the mean next-token cross-entropy (no label smoothing). The official trains without
EMA: `ema.decay` 0 keeps the EMA params equal to the params, so every reader (sample grid, export) sees them.

Data, tokenizer loading, the sample grid, in-training gFID and fine-tuning starts are the MaskGIT recipe's:
both are token generators over the same shards.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from titok_jax import recipes
from titok_jax.ar_sampling import ARSamplingSettings
from titok_jax.inference.tokenizer import TokenizerModel
from titok_jax.models import resize
from titok_jax.models.rar import RAR, permute, rar_from_config
from titok_jax.recipes import init_from
from titok_jax.recipes import maskgit as token_generator
from titok_jax.train.loop import Plan
from titok_jax.train.state import TrainState

ARTIFACT = recipes.GENERATOR


def random_order_ratio(step: jax.Array, anneal_start: int, anneal_end: int) -> jax.Array:
    """r(step): 1 before anneal_start, 1 - (step - start) / (end - start) between, 0 after anneal_end."""
    step = jnp.asarray(step, jnp.float32)
    ramp = 1.0 - (step - anneal_start) / max(anneal_end - anneal_start, 1)
    return jnp.where(step < anneal_start, 1.0, jnp.where(step > anneal_end, 0.0, ramp))


def sample_orders(rng: jax.Array, batch: int, num_tokens: int, ratio: jax.Array) -> jax.Array:
    """(B, N) token orders: a uniform random permutation with probability `ratio` per example, else raster."""
    shuffle_key, choose_key = jax.random.split(rng)
    random = jnp.argsort(jax.random.uniform(shuffle_key, (batch, num_tokens)), axis=-1).astype(jnp.int32)
    raster = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (batch, num_tokens))
    chosen = jax.random.uniform(choose_key, (batch, 1)) < ratio
    return jnp.where(chosen, random, raster)


@dataclasses.dataclass(frozen=True, eq=False)
class RARRecipe(token_generator.MaskGITRecipe):
    """MaskGITRecipe's state, sampling and evaluation with RAR's loss; `model` is a RAR, `sampling` its
    ARSamplingSettings (the inference Generator's sampler dispatches on the model)."""

    anneal_start: int = 125_000
    anneal_end: int = 187_500

    def step_context(self, state: TrainState, frozen: dict[str, Any], phase: Hashable) -> dict[str, Any]:
        return {**frozen, "step": state.step}

    def loss(
        self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, context: dict[str, Any]
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
        """Next-token cross-entropy in each example's order -> (loss, (metrics, None))."""
        tokens = self.tokens_of(batch, context)
        order_key, drop_key, dropout_key = jax.random.split(rng, 3)
        ratio = random_order_ratio(context["step"], self.anneal_start, self.anneal_end)
        orders = sample_orders(order_key, tokens.shape[0], self.model.num_tokens, ratio)
        dropped = jax.random.bernoulli(drop_key, self.class_dropout, batch["label"].shape)
        class_ids = jnp.where(dropped, self.model.num_classes, batch["label"])
        logits = self.model.apply(params, tokens, class_ids, orders, deterministic=False, rngs={"dropout": dropout_key})
        targets = permute(tokens.astype(jnp.int32), orders)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32))
        return loss, ({"loss": loss, "token_accuracy": accuracy, "random_order_ratio": ratio}, None)


# ---- config -> recipe -------------------------------------------------------------------------------------
def validate(config: ml_collections.ConfigDict) -> None:
    """Model, sampler and annealing fields, and the tokenizer / shards against the model. Reads no weights."""
    model = rar_from_config(config.model)
    ARSamplingSettings.from_config(config.sampling)
    start, end = config.randomness_anneal_start, config.randomness_anneal_end
    if not 0 <= start <= end:
        raise ValueError(
            f"config.randomness_anneal_start={start} and randomness_anneal_end={end} must satisfy 0 <= start <= end."
        )
    token_generator.validate_against_tokenizer(config, model)


def build(config: ml_collections.ConfigDict, random_frozen: bool = False) -> tuple[RARRecipe, dict[str, Any]]:
    """-> (recipe, {"tokenizer": frozen params}), as the MaskGIT recipe's build."""
    make_recipe = functools.partial(_recipe, config, rar_from_config(config.model))
    return token_generator.build_with(config, make_recipe, random_frozen)


def _recipe(config: ml_collections.ConfigDict, model: RAR, tokenizer: TokenizerModel) -> RARRecipe:
    return RARRecipe(
        model=model,
        tokenizer=tokenizer,
        sampling=ARSamplingSettings.from_config(config.sampling),
        **token_generator.recipe_fields(config),
        anneal_start=config.randomness_anneal_start,
        anneal_end=config.randomness_anneal_end,
    )


make_data = token_generator.make_data
load_init_source = token_generator.load_init_source


def prepare(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str) -> Plan:
    """The loop's plan: recipe + frozen tokenizer, token (or image) data, the sample grid, in-training gFID."""
    return token_generator.plan_for(config, mesh, workdir, *build(config), resize_rules(config))


def resize_rules(config: ml_collections.ConfigDict) -> dict[str, init_from.Resize]:
    """class_table: another number of classes (the class rows of the embedding table cut or grown)."""
    rows = functools.partial(resize.class_rows, codebook_size=config.model.codebook_size)
    return {"class_table": init_from.Resize(("embeddings/embedding",), rows)}
