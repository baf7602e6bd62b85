"""The MaskGIT generator recipe: class-conditional masked-token modelling over a frozen TiTok's codes.

Runs on the shared driver loop and `recipes.train_step` (no GAN, no codebook
statistics). A step masks round(K * arccos(t) / (pi / 2)) tokens per example,
drops the class (-> null) with probability `class_dropout`, and trains on the
label-smoothed masked-token loss. Batches carry `tokens` (pretokenized shards) or
`image` (tokenized on the fly by the frozen tokenizer in `frozen["tokenizer"]`).
Evaluation samples a fixed class grid with the EMA params and decodes it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from titok_jax import configs, optim
from titok_jax.data import tokens as token_data
from titok_jax.models.maskgit import MaskGITBert, MaskGITUViT, maskgit_from_config
from titok_jax.models.titok import TiTok
from titok_jax.sampling import SamplingSettings
from titok_jax.train import frozen_tokenizer, masking
from titok_jax.train.state import TrainState

# The sample grid written every sample_every steps: up to this many classes x this many samples.
GRID_CLASSES = 8
GRID_SAMPLES_PER_CLASS = 8


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratorRecipe:
    grid_name: ClassVar[str] = "samples"
    model: MaskGITBert | MaskGITUViT
    tokenizer: TiTok
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    seed: int
    sampling: SamplingSettings
    grad_accum_steps: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = True
    class_dropout: float = 0.1
    label_smoothing: float = 0.1
    unmasked_weight: float = 0.1

    # ---- state -----------------------------------------------------------------
    def example_batch(self) -> dict[str, jax.Array]:
        return {"tokens": jnp.zeros((1, self.model.num_tokens), jnp.int32), "label": jnp.zeros((1,), jnp.int32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        params = self.model.init(rng, batch["tokens"], batch["label"])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
        )

    def gan_active(self, step: int) -> bool:
        return False

    # ---- training --------------------------------------------------------------
    def tokens_of(self, batch: dict[str, jax.Array], frozen: dict[str, Any]) -> jax.Array:
        """The batch's codes: pretokenized, or the frozen tokenizer's encoding of its images."""
        if "tokens" in batch:
            return batch["tokens"]
        _, info = self.tokenizer.apply(frozen["tokenizer"], batch["image"], sample_posterior=False, method=TiTok.encode)
        return jax.lax.stop_gradient(info["indices"])

    def generator_loss(
        self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, frozen: dict[str, Any]
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
        """Masked-token loss of one (micro-)batch -> (loss, (metrics, None))."""
        tokens = self.tokens_of(batch, frozen)
        mask_key, drop_key, dropout_key = jax.random.split(rng, 3)
        inputs, masked = masking.mask_tokens(mask_key, tokens, mask_id=self.model.codebook_size)
        dropped = jax.random.bernoulli(drop_key, self.class_dropout, batch["label"].shape)
        class_ids = jnp.where(dropped, self.model.num_classes, batch["label"])
        logits = self.model.apply(params, inputs, class_ids, deterministic=False, rngs={"dropout": dropout_key})
        loss, metrics = masking.masked_token_loss(logits, tokens, masked, self.label_smoothing, self.unmasked_weight)
        metrics["masked_fraction"] = jnp.mean(masked.astype(jnp.float32))
        return loss, (metrics, None)

    # ---- sampling --------------------------------------------------------------
    def sample(self, params: Any, class_ids: jax.Array, rng: jax.Array) -> jax.Array:
        """Token ids (B, K) for class_ids (B,) (traceable; jit it)."""

        def logits_fn(ids, classes):
            return self.model.apply(params, ids, classes)

        return self.sampling.sample(
            logits_fn,
            class_ids,
            rng,
            num_tokens=self.model.num_tokens,
            codebook_size=self.model.codebook_size,
            null_class=self.model.num_classes,
        )

    def decode(self, tokenizer_params: Any, ids: jax.Array) -> jax.Array:
        """Token ids -> images in [0, 1]."""
        return jnp.clip(self.tokenizer.apply(tokenizer_params, ids, method=TiTok.decode_tokens), 0.0, 1.0)

    def evaluate(
        self, state: TrainState, eval_batch: dict[str, jax.Array], frozen: dict[str, Any]
    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """EMA samples of the class grid in `eval_batch["label"]` -> ({}, rows (classes, per class, H, W, 3)).

        The sampling key is fixed, so successive grids differ only by what the model learned.
        """
        ids = self.sample(state.ema_params, eval_batch["label"], jax.random.PRNGKey(self.seed))
        images = self.decode(frozen["tokenizer"], ids)
        shown = GRID_CLASSES * GRID_SAMPLES_PER_CLASS
        rows = images[:shown].reshape(GRID_CLASSES, GRID_SAMPLES_PER_CLASS, *images.shape[1:])
        return {}, rows


def grid_class_ids(num_classes: int, num_devices: int) -> np.ndarray:
    """Class ids of the sample grid: GRID_CLASSES evenly spaced classes (repeating when fewer exist) x
    GRID_SAMPLES_PER_CLASS, padded with class 0 to a multiple of the device count (sharded batch)."""
    classes = np.linspace(0, num_classes - 1, GRID_CLASSES).round().astype(np.int32)
    ids = np.repeat(classes, GRID_SAMPLES_PER_CLASS)
    padded = -(-len(ids) // num_devices) * num_devices
    return np.concatenate([ids, np.zeros(padded - len(ids), np.int32)])


def tokenizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The frozen tokenizer's experiment config (config.tokenizer.config is a `file.py[:arg]` spec)."""
    return configs.load_config(config.tokenizer.config)


def check_tokens_match(tokens_dir: str, identity: dict[str, Any]) -> dict[str, Any]:
    """Refuses token shards that another tokenizer (or another checkpoint of it) wrote; returns their metadata."""
    metadata = token_data.read_metadata(tokens_dir)
    token_data.shard_paths(tokens_dir, metadata)
    differing = [k for k in frozen_tokenizer.IDENTITY_KEYS if metadata.get(k) != identity[k]]
    if differing:
        raise ValueError(
            f"The token shards in config.tokens_dir={tokens_dir!r} were written by another tokenizer "
            f"({metadata.get('tokenizer_workdir')!r} at step {metadata.get('checkpoint_step')}) than "
            f"config.tokenizer ({identity['tokenizer_workdir']!r} at step {identity['checkpoint_step']}); they "
            f"differ in {differing}. Pretokenize again with this tokenizer, or point config.tokenizer at the one "
            "that wrote them: samples would be decoded by the wrong codebook."
        )
    return metadata


def build_generator_recipe(
    config: ml_collections.ConfigDict, random_tokenizer: bool = False
) -> tuple[GeneratorRecipe, dict[str, Any]]:
    """-> (recipe, {"tokenizer": frozen EMA params}). Loads and checks the tokenizer and shards: call before compiling.

    `random_tokenizer` draws the tokenizer's weights at random (benchmarks: only shapes matter)."""
    model = maskgit_from_config(config.model)
    workdir = config.tokenizer.workdir
    if random_tokenizer:
        import flax.linen as nn

        from titok_jax.models.titok import titok_from_config

        tokenizer = titok_from_config(tokenizer_config(config).model)
        images = jnp.zeros((1, *tokenizer.image_shape), jnp.float32)
        params = {"params": nn.meta.unbox(jax.jit(tokenizer.init)(jax.random.PRNGKey(0), images))["params"]}
        return _generator_recipe(config, model, tokenizer), {"tokenizer": params}
    if not workdir:
        raise ValueError(
            "The generator needs its tokenizer: set config.tokenizer.workdir to the tokenizer's training workdir "
            "(and config.tokenizer.config to its experiment config)."
        )
    from titok_jax.tokenizer import is_exported_tokenizer

    exported = is_exported_tokenizer(workdir)
    tokenizer, params, identity = frozen_tokenizer.load_tokenizer(
        None if exported else tokenizer_config(config), os.path.abspath(workdir)
    )
    if config.tokens_dir:
        check_tokens_match(config.tokens_dir, identity)
    return _generator_recipe(config, model, tokenizer), {"tokenizer": params}


def _generator_recipe(config: ml_collections.ConfigDict, model: Any, tokenizer: Any) -> GeneratorRecipe:
    return GeneratorRecipe(
        model=model,
        tokenizer=tokenizer,
        optimizer=optim.make_optimizer(config.optimizer, config.total_steps),
        learning_rate=optim.learning_rate_schedule(config.optimizer, config.total_steps),
        seed=config.seed,
        sampling=SamplingSettings.from_config(config.sampling),
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.ema.decay,
        ema_warmup=config.ema.warmup,
        class_dropout=config.losses.class_dropout,
        label_smoothing=config.losses.label_smoothing,
        unmasked_weight=config.losses.unmasked_weight,
    )
