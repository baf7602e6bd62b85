"""Tokenizer recipes: two-stage stage 1 (proxy codes of a frozen VQGAN), stage 2 (pixels, frozen encoder,
warm start from stage 1) and single stage (VQ / VAE, L2 + perceptual + GAN).

A recipe holds the static pieces (model, optimizer, loss weights) and pure functions of (params, batch, rng,
context); the driver loop and `train.step.train_step` are shared by all recipes. `frozen` holds constant
weights passed into the jitted step: the VQGAN teacher, perceptual networks. This module also owns these
recipes' config validation, build, data, evaluators, resume check and the stage-2 warm start.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from titok_jax import checkpoint, images, losses, optim, recipes
from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.evaluation import prefix_plots, tokenizer_eval
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.models import layer_stack, quantizers, resize
from titok_jax.models.discriminator import NLayerDiscriminator
from titok_jax.models.titok import (
    DISCRETE_MODES,
    TiTok,
    check_prefix_lengths,
    draw_num_kept,
    pixel_decoder_fields,
    powers_of_two_up_to,
    titok_from_config,
)
from titok_jax.models.vqgan import VQGAN
from titok_jax.recipes import init_from, teacher
from titok_jax.train.loop import Evaluator, Plan
from titok_jax.train.state import TrainState
from titok_jax.trees import matches

ARTIFACT = recipes.TOKENIZER


# Codebooks up to this size also report each code's use (the `code_counts` vector: dead codes and the usage
# histogram over each log window); a 2**16-entry count per step costs nothing next to the step.
MAX_COUNTED_CODES = 2**16


def codebook_health(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
    """This batch's codebook usage (fraction of codes used), code entropy in bits and perplexity (2**bits: the
    number of equally used codes with that entropy; a collapsed codebook sits near 1), and `code_counts`: how
    often each code was used (the loop sums it over the log window: `TokenizerRecipe.window_summaries`)."""
    counts = jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
    p = counts / jnp.maximum(counts.sum(), 1.0)
    bits = -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0))
    health = {"codebook_usage": jnp.mean(counts > 0), "codebook_entropy_bits": bits, "codebook_perplexity": 2.0**bits}
    if codebook_size <= MAX_COUNTED_CODES:
        health["code_counts"] = counts
    return health


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizerRecipe:
    """Base: TiTok trained by one optimizer, EMA of its params."""

    grid_name: ClassVar[str] = "reconstructions"  # the image grid `evaluate` returns
    phases: ClassVar[tuple[Hashable, ...]] = (False,)  # GAN active
    model: TiTok
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    seed: int
    grad_accum_steps: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = True
    quantizer_weight: float = 1.0
    kl_weight: float = 1e-6

    # ---- state -----------------------------------------------------------------
    def init_params(self, rng: jax.Array, images: jax.Array) -> Any:
        params_rng, noise_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "noise": noise_rng}, images)

    def example_batch(self) -> dict[str, jax.Array]:
        """A one-example batch of the right shapes (for init and abstract state)."""
        return {"image": jnp.zeros((1, *self.model.image_shape), jnp.float32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        params = self.init_params(rng, batch["image"])
        usage = None
        if self.model.quantize_mode == "vq" and self.model.clustering_vq:
            usage = jnp.zeros((self.model.codebook_size,), jnp.float32)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            codebook_usage_ema=usage,
        )

    def phase(self, step: int) -> bool:
        """Whether step `step` trains with a GAN (host-side int: the driver picks the step function)."""
        return False

    def step_context(self, state: TrainState, frozen: dict[str, Any], phase: Hashable) -> dict[str, Any]:
        return {**frozen, "step": state.step}

    def before_apply(
        self, state: TrainState, params: Any, metrics: dict[str, jax.Array]
    ) -> tuple[TrainState, Any, dict[str, jax.Array]]:
        """Clustering VQ: as officially, revive dead codes in place before the optimizer's update is applied.
        (With grad accumulation the statistics are micro-batch averages.)"""
        if state.codebook_usage_ema is None or "code_frequencies" not in metrics:
            return state, params, metrics
        metrics = dict(metrics)
        stats = {k: metrics.pop(k) for k in CLUSTERING_STATS}
        codebook, usage_ema = quantizers.clustering_update(
            params["params"]["quantize"]["codebook"],
            state.codebook_usage_ema,
            stats["code_frequencies"],
            stats["nearest_latents"],
        )
        params = {**params, "params": {**params["params"], "quantize": {"codebook": codebook}}}
        return state.replace(codebook_usage_ema=usage_ema), params, metrics

    def extra_updates(
        self, state: TrainState, batch: dict[str, jax.Array], outputs: Any, phase: Hashable
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        return state, {}

    def window_summaries(
        self, sums: dict[str, np.ndarray], steps: int
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The log window's code use (`code_counts` summed over its `steps` steps) -> `dead_codes` (codes no
        batch of the window used), `window_codebook_usage` and the usage histogram image."""
        if "code_counts" not in sums:
            return {}, {}
        counts = sums["code_counts"]
        scalars = {"dead_codes": float(np.sum(counts == 0)), "window_codebook_usage": float(np.mean(counts > 0))}
        return scalars, {"codebook_usage_histogram": images.usage_histogram(counts)[None]}

    # ---- losses ----------------------------------------------------------------
    def drop_tails(self, params: Any, latents: jax.Array, rng: jax.Array) -> jax.Array:
        """Nested dropout (model.token_dropout): each image keeps its first k tokens, k drawn per image from the
        step's key; the rest become the mask vector. Latents pass unchanged without token dropout."""
        model = self.model
        if model.token_dropout == "none":
            return latents
        num_kept = draw_num_kept(
            jax.random.fold_in(rng, 1), latents.shape[0], model.num_latent_tokens, model.token_dropout,
            model.token_dropout_rate,
        )  # fmt: skip
        return model.apply(params, latents, num_kept, method=TiTok.keep_prefix)

    def decode_for_loss(self, params: Any, latents: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """The decoder's output for the loss -> (decoded, prefix_decoded). Token dropout decodes each image's
        drawn prefix; with model.token_dropout_full_pass `decoded` is from all K tokens and `prefix_decoded` from
        the prefix (one decoder call over both halves), else `prefix_decoded` is None."""
        dropped = self.drop_tails(params, latents, rng)
        if not self.model.token_dropout_full_pass:
            return self.model.apply(params, dropped, method=TiTok.decode), None
        both = self.model.apply(params, jnp.concatenate([latents, dropped], axis=0), method=TiTok.decode)
        return both[: latents.shape[0]], both[latents.shape[0] :]

    def decode_to_pixels(self, params: Any, latents: jax.Array, frozen: dict[str, Any]) -> jax.Array:
        """Latents (B, K, token_size) -> pixels clipped to [0, 1] (a stage-1 model renders its proxy codes)."""
        return jnp.clip(self.model.apply(params, latents, method=TiTok.decode), 0.0, 1.0)

    def quantizer_terms(self, info: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Weighted quantizer (VQ) or KL (VAE) loss, and its metrics."""
        if self.model.quantize_mode == "vq":
            metrics = {
                "quantizer_loss": info["quantizer_loss"],
                "commitment_loss": info["commitment_loss"],
                "codebook_loss": info["codebook_loss"],
                **codebook_health(info["indices"], self.model.codebook_size),
            }
            return self.quantizer_weight * info["quantizer_loss"], metrics
        kl = losses.kl_loss(info["kl"])
        return self.kl_weight * kl, {"kl_loss": kl, "posterior_std": jnp.mean(jnp.exp(0.5 * info["logvar"]))}

    def loss(
        self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, context: dict[str, Any]
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array]]:
        """-> (loss, (metrics, reconstructions in [0, 1]-ish pixel space))."""
        raise NotImplementedError

    def reconstruct(self, params: Any, images: jax.Array, frozen: dict[str, Any]) -> jax.Array:
        """Deterministic reconstructions (posterior mean for VAE), pixels clipped to [0, 1]."""
        decoded, _ = self.model.apply(params, images, sample_posterior=False)
        return jnp.clip(decoded, 0.0, 1.0)

    def evaluate(
        self, state: TrainState, eval_batch: dict[str, jax.Array], frozen: dict[str, Any]
    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """Held-out reconstruction MSE of params and EMA params over the real images of the batch (its
        `mask`, when it has one), and grid rows (originals, EMA reconstructions). A variable-length tokenizer
        (model.token_dropout) also reports the EMA MSE from the first k tokens, `ema_reconstruction_mse_k{k}` for
        k = 1, 2, 4, ..., K, and adds a grid row per k < K (after the reconstructions from all K, k ascending)."""
        images = eval_batch["image"]
        weights = eval_batch["mask"].astype(jnp.float32) if "mask" in eval_batch else jnp.ones(images.shape[0])

        def masked_mse(reconstructions):
            per_image = jnp.mean(jnp.square(reconstructions - images), axis=tuple(range(1, images.ndim)))
            return jnp.sum(per_image * weights) / jnp.maximum(jnp.sum(weights), 1)

        scalars = {}
        for name, params in (("params", state.params), ("ema", state.ema_params)):
            reconstructions = self.reconstruct(params, images, frozen)
            scalars[f"{name}_reconstruction_mse"] = masked_mse(reconstructions)
        rows = [images[:8], reconstructions[:8]]
        if self.model.token_dropout != "none":
            # A few k (log-spaced) keep this cheap: one decode of the grid batch each, all in this one compile.
            latents, _ = self.model.apply(state.ema_params, images, sample_posterior=False, method=TiTok.encode)
            num_tokens = self.model.num_latent_tokens
            for k in powers_of_two_up_to(num_tokens):
                kept = jnp.full((images.shape[0],), k, jnp.int32)
                prefix = self.model.apply(state.ema_params, latents, kept, method=TiTok.keep_prefix)
                decoded = self.decode_to_pixels(state.ema_params, prefix, frozen)
                scalars[f"ema_reconstruction_mse_k{k}"] = masked_mse(decoded)
                if k < num_tokens:
                    rows.append(decoded[:8])
        return scalars, jnp.stack(rows)

    def evaluation_images(self, scalars: dict[str, float]) -> dict[str, np.ndarray]:
        """A variable-length tokenizer's held-out EMA MSE against k (from `evaluate`'s scalars) as a plot."""
        if self.model.token_dropout == "none":
            return {}
        by_num_tokens = {
            k: {"reconstruction_mse": scalars[f"ema_reconstruction_mse_k{k}"]}
            for k in powers_of_two_up_to(self.model.num_latent_tokens)
        }
        plot = prefix_plots.quality_plot(by_num_tokens, title="held-out EMA reconstruction MSE by tokens decoded")
        return {"reconstruction_mse_by_num_tokens": plot[None]}


@dataclasses.dataclass(frozen=True, eq=False)
class Stage1Recipe(TokenizerRecipe):
    """Two-stage, stage 1: predict the frozen VQGAN's proxy codes of the same image."""

    teacher: VQGAN | None = None

    def loss(self, params, batch, rng, context):
        frozen = context
        images = batch["image"]
        codes = jax.lax.stop_gradient(self.teacher.apply(frozen["teacher"], images, method=VQGAN.encode))
        latents, info = self.model.apply(params, images, rngs={"noise": rng}, method=TiTok.encode)
        logits, prefix_logits = self.decode_for_loss(params, latents, rng)
        cross_entropy = losses.proxy_code_cross_entropy(logits, codes)
        quantizer_loss, metrics = self.quantizer_terms(info)
        if prefix_logits is not None:
            prefix_cross_entropy = losses.proxy_code_cross_entropy(prefix_logits, codes)
            metrics["prefix_proxy_cross_entropy"] = prefix_cross_entropy
            cross_entropy = cross_entropy + self.model.token_dropout_prefix_weight * prefix_cross_entropy
        loss = cross_entropy + quantizer_loss
        metrics.update(
            loss=loss,
            proxy_cross_entropy=cross_entropy,
            proxy_accuracy=jnp.mean(jnp.argmax(logits, -1) == codes),
        )
        return loss, (metrics, self._render(logits, frozen))

    def _render(self, logits: jax.Array, frozen: dict[str, Any]) -> jax.Array:
        return render_proxy_codes(self.teacher, frozen["teacher"], logits)

    def reconstruct(self, params, images, frozen):
        logits, _ = self.model.apply(params, images)
        return self._render(logits, frozen)

    def decode_to_pixels(self, params, latents, frozen):
        return self._render(self.model.apply(params, latents, method=TiTok.decode), frozen)


def render_proxy_codes(teacher_model: VQGAN, teacher_variables: Any, logits: jax.Array) -> jax.Array:
    """Pixels of the most likely proxy codes, through the teacher's decoder."""
    codes = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
    return jnp.clip(teacher_model.apply(teacher_variables, codes, method=VQGAN.decode_codes), 0.0, 1.0)


# Per-code statistics of clustering VQ, passed from the loss to the step through the metrics.
CLUSTERING_STATS = ("code_frequencies", "nearest_latents")

# The generator loss's GAN terms (reported only when the recipe has a discriminator).
GAN_METRICS = ("weighted_gan_loss", "discriminator_factor", "d_weight", "gan_loss")

# Stage 2 trains the decoder side only.
STAGE2_FROZEN = ("encoder", "quantize", "latent_tokens")


@dataclasses.dataclass(frozen=True, eq=False)
class PixelRecipe(TokenizerRecipe):
    """Single-stage (VQ / VAE) and stage 2: L2 + perceptual + quantizer/KL + GAN.

    With `freeze_encoder` (stage 2) the encoder, quantizer and latent tokens get
    no gradient (the optimizer also gives them zero updates and no state). With
    a `discriminator`, a second optimizer trains it on the hinge + LeCam loss
    from `loss_weights.discriminator_start` on. `perceptual_loss(frozen, x, y)`,
    when set, returns the (unweighted) perceptual distance.
    """

    loss_weights: losses.LossWeights | None = None
    freeze_encoder: bool = False
    discriminator: NLayerDiscriminator | None = None
    discriminator_optimizer: optax.GradientTransformation | None = None
    perceptual_loss: Any = None

    def init(self, rng, batch):
        state = super().init(rng, batch)
        if self.discriminator is None:
            return state
        d_params = self.discriminator.init(jax.random.fold_in(rng, 1), batch["image"])
        return state.replace(
            discriminator={"params": d_params, "opt_state": self.discriminator_optimizer.init(d_params)},
            lecam=losses.init_lecam_ema(),
        )

    @property
    def phases(self) -> tuple[bool, ...]:
        return (False, True) if self.discriminator is not None else (False,)

    def step_context(self, state, frozen, phase):
        context = {**frozen, "step": state.step}
        if phase:  # the adversarial term reads the live discriminator, from the GAN's start step on
            context["discriminator"] = state.discriminator["params"]
        return context

    def extra_updates(self, state, batch, outputs, phase):
        """The discriminator sees the reconstructions of the generator's pre-update params, as officially.
        Before the GAN starts, zeros in place of its metrics keep every step's keys the same."""
        if self.discriminator is None:
            return state, {}
        if phase:
            return self.discriminator_step(state, batch["image"], outputs)
        return state, self.idle_discriminator_metrics(state, batch["image"])

    def loss(self, params, batch, rng, context):
        frozen = context
        images = batch["image"]
        latents, info = self.model.apply(params, images, rngs={"noise": rng}, method=TiTok.encode)
        if self.freeze_encoder:
            latents = jax.lax.stop_gradient(latents)
            info = {k: jax.lax.stop_gradient(v) for k, v in info.items()}
        decoded, prefix_decoded = self.decode_for_loss(params, latents, rng)
        reconstruction = losses.reconstruction_l2(decoded, images)
        weights = self.loss_weights
        perceptual = jnp.zeros((), jnp.float32)
        with_perceptual = self.perceptual_loss is not None and weights.perceptual_weight > 0
        if with_perceptual:
            perceptual = self.perceptual_loss(frozen["perceptual"], decoded, images)
        prefix_metrics = {}
        if prefix_decoded is not None:  # the prefixes' pixel terms, weighted; the GAN sees the full decode only
            prefix_weight = self.model.token_dropout_prefix_weight
            prefix_metrics["prefix_reconstruction_loss"] = losses.reconstruction_l2(prefix_decoded, images)
            reconstruction = reconstruction + prefix_weight * prefix_metrics["prefix_reconstruction_loss"]
            if with_perceptual:
                prefix_metrics["prefix_perceptual_loss"] = self.perceptual_loss(
                    frozen["perceptual"], prefix_decoded, images
                )
                perceptual = perceptual + prefix_weight * prefix_metrics["prefix_perceptual_loss"]
        adversarial = None
        if "discriminator" in frozen:  # only from the GAN's start step on
            fake_logits = self.discriminator.apply(frozen["discriminator"], decoded)
            adversarial = losses.generator_adversarial_loss(fake_logits)
        # Stage 2 sets quantizer_weight 0: the frozen quantizer's loss is a constant there.
        loss, metrics = losses.single_stage_generator_loss(
            reconstruction, perceptual, info, adversarial, frozen["step"], weights, self.model.quantize_mode
        )
        # Terms a run does not have are not reported (a GAN-less run logging d_weight reads as if it had one).
        if self.discriminator is None:
            metrics = {k: v for k, v in metrics.items() if k not in GAN_METRICS}
        if self.perceptual_loss is None:
            metrics.pop("perceptual_loss", None)
        if self.model.quantize_mode in DISCRETE_MODES:
            metrics.update(codebook_health(info["indices"], self.model.codebook_size))
            metrics.update({k: info[k] for k in CLUSTERING_STATS if k in info})
        metrics.update(prefix_metrics, loss=loss)
        return loss, (metrics, jnp.clip(decoded, 0.0, 1.0))

    def phase(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.loss_weights.discriminator_start

    def idle_discriminator_metrics(self, state: TrainState, images: jax.Array) -> dict[str, jax.Array]:
        """Zeros shaped like the discriminator's metrics, so every step reports the same keys."""

        def metrics_of(d_params):
            logits = self.discriminator.apply(d_params, images)
            return losses.discriminator_loss(logits, logits, state.lecam, state.step, self.loss_weights)[2]

        shapes = jax.eval_shape(metrics_of, state.discriminator["params"])
        return jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), shapes)

    def discriminator_step(
        self, state: TrainState, real: jax.Array, fake: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """Hinge + LeCam update of the discriminator (run from the start step on, see `phase`)."""
        weights = self.loss_weights

        def loss_fn(d_params):
            real_logits = self.discriminator.apply(d_params, real)
            fake_logits = self.discriminator.apply(d_params, jax.lax.stop_gradient(fake))
            loss, lecam, metrics = losses.discriminator_loss(real_logits, fake_logits, state.lecam, state.step, weights)
            return loss, (lecam, metrics)

        d = state.discriminator
        grads, (lecam, metrics) = jax.grad(loss_fn, has_aux=True)(d["params"])
        updates, opt_state = self.discriminator_optimizer.update(grads, d["opt_state"], d["params"])
        discriminator = {"params": optax.apply_updates(d["params"], updates), "opt_state": opt_state}
        return state.replace(discriminator=discriminator, lecam=lecam), metrics


# ---- config -> recipe -------------------------------------------------------------------------------------
STAGES = ("two_stage_1", "two_stage_2", "single_stage")


def validate(config: ml_collections.ConfigDict) -> None:
    """The tokenizer recipes' checks (model fields, image size, teacher <-> model agreement); reads no weights."""
    model = titok_from_config(config.model)
    if config.data.image_size != model.image_size:
        raise ValueError(f"data.image_size={config.data.image_size} differs from model.image_size={model.image_size}.")
    frozen, trainable = init_from.field(config, "frozen"), init_from.field(config, "trainable")
    codebook = "quantize/codebook"
    if model.clustering_vq and (matches(codebook, frozen) or (trainable and not matches(codebook, trainable))):
        raise ValueError(
            "The codebook is frozen (config.frozen / config.trainable) but model.clustering_vq=True would still move "
            "its dead codes: set --config.model.clustering_vq=False."
        )
    if config.recipe in ("two_stage_1", "two_stage_2"):
        if model.quantize_mode not in ("vq", "vae"):
            raise ValueError(
                f"quantize_mode={model.quantize_mode!r} trains in the single_stage recipe (the two-stage recipe "
                "is the official VQ / VAE form)."
            )
        if not model.legacy_two_stage:
            raise ValueError("The two-stage recipe needs model.legacy_two_stage=True.")
        vqgan = config.teacher
        factor = 2 ** (len(vqgan.channel_multipliers) - 1)
        if factor != model.decoder_patch_size:
            raise ValueError(
                f"The teacher VQGAN downsamples by {factor} but model.decoder_patch_size={model.decoder_patch_size}: "
                "its proxy codes would not line up with the decoder grid."
            )
        if vqgan.codebook_size != model.proxy_codebook_size:
            raise ValueError(
                f"teacher.codebook_size={vqgan.codebook_size} differs from "
                f"model.proxy_codebook_size={model.proxy_codebook_size}."
            )
        if model.with_pixel_decoder and pixel_decoder_fields(vqgan) != {
            k: getattr(model, k) for k in pixel_decoder_fields(vqgan)
        }:
            raise ValueError("The stage-2 pixel decoder fields of config.model must equal the teacher VQGAN's.")


def build(config: ml_collections.ConfigDict, random_frozen: bool = False) -> tuple[TokenizerRecipe, dict[str, Any]]:
    """-> (recipe, frozen weights). Reads weight files, so call it before compiling anything.

    `random_frozen` draws the frozen networks (VQGAN teacher, perceptual nets) at random instead
    of reading their files: for benchmarks, where only shapes matter."""
    stage = config.recipe
    model = titok_from_config(config.model)
    frozen_fn = recipes.frozen_params(config, always=STAGE2_FROZEN if stage == "two_stage_2" else ())
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
        return Stage1Recipe(**common, teacher=teacher_module), frozen
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
    recipe = PixelRecipe(**common, loss_weights=weights, freeze_encoder=stage == "two_stage_2", **gan, **perceptual)
    return recipe, frozen


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


def make_data(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, np.ndarray]]:
    """-> (this process's train iterator, its part of the held-out grid batch)."""
    train_iter = pipeline.make_train_iterator(config.data, config.batch_size, seed=config.seed)
    eval_batch = next(iter(pipeline.make_eval_iterator(config.data, config.eval_batch_size)))
    # The mask rides along: padding (an eval split smaller than the batch) and undecodable images stay out
    # of the held-out MSE.
    return train_iter, {"image": eval_batch["image"], "mask": eval_batch["mask"]}


def prepare(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str) -> Plan:
    """The loop's plan: recipe + frozen weights, data, the full eval-split evaluator, resume check, warm start."""
    recipe, frozen = build(config)  # reads weight files: fails before any compile
    train_iter, grid_batch = make_data(config)
    evaluators = []
    evaluation = config.evaluation
    if evaluation.every:
        inception_vars, real_inception = tokenizer_eval.load_inception(evaluation.inception_weights)  # fails early
        inception_vars = jax.device_put(inception_vars, sh.replicated(mesh))
        frozen_on_mesh = jax.device_put(frozen, sh.replicated(mesh))
        encode = functools.partial(tokenizer_lib.encode, recipe.model)

        def run(state: TrainState, step: int) -> dict[str, float]:
            del step
            return tokenizer_eval.evaluate_tokenizer(
                recipe.reconstruct, encode, recipe.model, state.ema_params, frozen_on_mesh, config.data,
                config.eval_batch_size, mesh, inception_vars, real_inception, evaluation.metrics,
                evaluation.max_images,
            )  # fmt: skip

        evaluators.append(Evaluator(every=evaluation.every, run=run))
    fill, fill_patterns = None, ()
    if config.recipe == "two_stage_2":  # as the official finetune_decoder: the teacher's decoder for pixels
        fill, fill_patterns = functools.partial(teacher_pixel_decoder, config), PIXEL_DECODER
    warm_start = init_from.warm_start(
        config, workdir, init_from.abstract_params(recipe, config.seed), load_init_source, resize_rules(config),
        fill, fill_patterns,
    )  # fmt: skip
    return Plan(
        recipe=recipe,
        frozen=frozen,
        mesh=mesh,
        train_iter=train_iter,
        grid_batch=grid_batch,
        grid_every=config.image_every,
        evaluators=evaluators,
        warm_start=warm_start,
        check_resume=functools.partial(check_resume_layout, config=config),
    )


def check_resume_layout(workdir: str, step: int, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume with another scan_layers than the checkpoints have (their optimizer state is in
    that layout too) before orbax fails on the tree structure."""
    saved = layer_stack.scanned_layout(checkpoint.saved_parts(workdir, step)["params"])
    wanted = config.model.get("scan_layers", False)
    if saved is not None and saved != wanted:
        raise ValueError(
            f"The checkpoints in {workdir!r} hold {'scanned' if saved else 'unscanned'} ViT blocks, but "
            f"config.model.scan_layers={wanted}: resume with --config.model.scan_layers={saved}."
        )


# ---- fine-tuning starts (recipes.init_from) ----------------------------------------------------------------
# The stage-2 pixel decoder: the teacher VQGAN's decoder and codebook, filled in when the source lacks them.
PIXEL_DECODER = ("pixel_decoder", "pixel_quantize")


def resize_rules(config: ml_collections.ConfigDict) -> dict[str, init_from.Resize]:
    """grid_positions: a new image or patch size (the [class | grid] tables interpolated); latent_tokens: a
    new token count (the latent-token tables cut, or grown with fresh rows)."""
    del config
    return {
        "grid_positions": init_from.Resize(("*/positional_embedding",), resize.grid_positions),
        "latent_tokens": init_from.Resize(
            ("latent_tokens", "*/latent_token_positional_embedding"), resize.leading_rows
        ),
    }


def load_init_source(path: str, source_config: str | None) -> init_from.Loaded:
    """A tokenizer's params from a training workdir (its recorded config, or `source_config`), a bundle, an
    official hub directory, or a weights file + `source_config` (config.json / official .yaml)."""
    path = init_from.resolve_source(path, ARTIFACT)
    _, variables, metadata = tokenizer_lib.load_model_and_variables(path, source_config)
    step = f" step {metadata['step']}" if "step" in metadata else ""
    return init_from.Loaded(init_from.flat_host_params(variables), f"{path!r}{step}")


def teacher_pixel_decoder(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The stage-2 pixel decoder's params from the teacher VQGAN (its file read once, here)."""
    _, teacher_variables = teacher.load_teacher(config.teacher, config.model.image_size, config.seed)
    params = teacher_variables["params"]
    return init_from.flat_host_params(
        {
            "params": {
                "pixel_quantize": {"codebook": params["quantizer"]["codebook"]},
                "pixel_decoder": params["decoder"],
            }
        }
    )


# ---- reading a trained run -------------------------------------------------------------------------------
def reconstructor(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[Any, Any, Any, int]:
    """(reconstruct(params, images, aux) -> pixels, EMA variables on `mesh`, aux, step) of a tokenizer workdir,
    read params-only. A stage-1 model renders its proxy codes through the teacher's decoder (aux: its weights)."""
    model, restored = tokenizer_lib.restore_workdir(workdir, config, mesh)
    if model.decodes_to_pixels:

        def reconstruct(params, images, aux):
            del aux
            return jnp.clip(model.apply(params, images, sample_posterior=False)[0], 0.0, 1.0)

        return reconstruct, restored.variables, {}, restored.step
    teacher_model, teacher_variables = teacher.load_teacher(config.teacher, model.image_size, config.seed)

    def render(params, images, aux):
        return render_proxy_codes(teacher_model, aux, model.apply(params, images)[0])

    return render, restored.variables, jax.device_put(teacher_variables, sh.replicated(mesh)), restored.step


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    metrics: list[str],
    inception_weights: str = "",
    max_images: int = 0,
) -> tuple[dict[str, float], int]:
    """(metrics of the newest checkpoint's EMA params on config.data's eval split, step)."""
    mesh = sh.make_mesh(**config.mesh)
    reconstruct, variables, aux, step = reconstructor(config, workdir, mesh)
    inception_vars, real = tokenizer_eval.load_inception(inception_weights)
    model = titok_from_config(config.model)
    results = tokenizer_eval.evaluate_tokenizer(
        reconstruct, functools.partial(tokenizer_lib.encode, model), model, variables, aux, config.data,
        config.eval_batch_size, mesh, inception_vars, real, metrics, max_images, progress=True,
    )  # fmt: skip
    return results, step


def evaluate_token_counts(
    config: ml_collections.ConfigDict,
    workdir: str,
    token_counts: list[int],
    metrics: list[str],
    inception_weights: str = "",
    max_images: int = 0,
    grid_images: int = 4,
) -> tuple[tokenizer_eval.TokenCountResults, int]:
    """(the metrics of the newest checkpoint's EMA params decoding only the first k tokens, for each k, and a few
    images decoded at each; step) of a variable-length tokenizer workdir."""
    model = titok_from_config(config.model)
    check_prefix_lengths(model, token_counts, "--token_counts", allow_full=False)  # before any restore or compile
    if not model.decodes_to_pixels:
        raise ValueError(
            "--token_counts scores pixels, and this two-stage stage-1 tokenizer decodes proxy codes: evaluate its "
            "stage-2 run (its training grid already reports eval/ema_reconstruction_mse_k{k} through the teacher)."
        )
    mesh = sh.make_mesh(**config.mesh)
    inception_vars, real = tokenizer_eval.load_inception(inception_weights)  # a bad file fails before the restore
    model, restored = tokenizer_lib.restore_workdir(workdir, config, mesh)
    results = tokenizer_eval.evaluate_token_counts(
        model, restored.variables, config.data, config.eval_batch_size, mesh, inception_vars, real, token_counts,
        metrics, max_images, progress=True, grid_images=grid_images,
    )  # fmt: skip
    return results, restored.step
