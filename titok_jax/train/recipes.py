"""Tokenizer recipes: what differs between stage 1, stage 2 and single-stage training.

A recipe holds the static pieces (model, optimizer, loss weights) and pure
functions of (params, batch, rng, frozen): the driver loop and `train_step`
are shared by all recipes. `frozen` holds constant weights passed into the
jitted step: the VQGAN teacher, perceptual networks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from titok_jax import losses, optim
from titok_jax.models import quantizers
from titok_jax.models.discriminator import NLayerDiscriminator
from titok_jax.models.titok import TiTok
from titok_jax.models.vqgan import VQGAN
from titok_jax.train.accumulate import accumulate
from titok_jax.train.state import TrainState


def codebook_usage(indices: jax.Array, codebook_size: int) -> jax.Array:
    """Fraction of the codebook used by `indices` (in this batch)."""
    used = jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].set(1.0)
    return used.mean()


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizerRecipe:
    """Base: TiTok trained by one optimizer, EMA of its params."""

    grid_name: ClassVar[str] = "reconstructions"  # the image grid `evaluate` returns
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

    def gan_active(self, step: int) -> bool:
        """Whether step `step` trains with a GAN (host-side int: the driver picks the step function)."""
        return False

    # ---- losses ----------------------------------------------------------------
    def quantizer_terms(self, info: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Weighted quantizer (VQ) or KL (VAE) loss, and its metrics."""
        if self.model.quantize_mode == "vq":
            metrics = {
                "quantizer_loss": info["quantizer_loss"],
                "commitment_loss": info["commitment_loss"],
                "codebook_loss": info["codebook_loss"],
                "codebook_usage": codebook_usage(info["indices"], self.model.codebook_size),
            }
            return self.quantizer_weight * info["quantizer_loss"], metrics
        kl = losses.kl_loss(info["kl"])
        return self.kl_weight * kl, {"kl_loss": kl, "posterior_std": jnp.mean(jnp.exp(0.5 * info["logvar"]))}

    def generator_loss(
        self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, frozen: dict[str, Any]
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
        """Held-out reconstruction MSE of params and EMA params, and grid rows (originals, EMA reconstructions)."""
        images = eval_batch["image"]
        scalars = {}
        for name, params in (("params", state.params), ("ema", state.ema_params)):
            reconstructions = self.reconstruct(params, images, frozen)
            scalars[f"{name}_reconstruction_mse"] = jnp.mean(jnp.square(reconstructions - images))
        return scalars, jnp.stack([images[:8], reconstructions[:8]])


@dataclasses.dataclass(frozen=True, eq=False)
class Stage1Recipe(TokenizerRecipe):
    """Two-stage, stage 1: predict the frozen VQGAN's proxy codes of the same image."""

    teacher: VQGAN | None = None

    def generator_loss(self, params, batch, rng, frozen):
        images = batch["image"]
        codes = jax.lax.stop_gradient(self.teacher.apply(frozen["teacher"], images, method=VQGAN.encode))
        logits, info = self.model.apply(params, images)
        cross_entropy = losses.proxy_code_cross_entropy(logits, codes)
        quantizer_loss, metrics = self.quantizer_terms(info)
        loss = cross_entropy + quantizer_loss
        metrics.update(
            loss=loss,
            proxy_cross_entropy=cross_entropy,
            proxy_accuracy=jnp.mean(jnp.argmax(logits, -1) == codes),
        )
        return loss, (metrics, self._render(logits, frozen))

    def _render(self, logits: jax.Array, frozen: dict[str, Any]) -> jax.Array:
        """Pixels of the most likely proxy codes, through the teacher's decoder."""
        codes = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
        return jnp.clip(self.teacher.apply(frozen["teacher"], codes, method=VQGAN.decode_codes), 0.0, 1.0)

    def reconstruct(self, params, images, frozen):
        logits, _ = self.model.apply(params, images)
        return self._render(logits, frozen)


# Per-code statistics of clustering VQ, passed from the loss to the step through the metrics.
CLUSTERING_STATS = ("code_frequencies", "nearest_latents")

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

    def generator_loss(self, params, batch, rng, frozen):
        images = batch["image"]
        latents, info = self.model.apply(params, images, rngs={"noise": rng}, method=TiTok.encode)
        if self.freeze_encoder:
            latents = jax.lax.stop_gradient(latents)
            info = {k: jax.lax.stop_gradient(v) for k, v in info.items()}
        decoded = self.model.apply(params, latents, method=TiTok.decode)
        reconstruction = losses.reconstruction_l2(decoded, images)
        weights = self.loss_weights
        perceptual = jnp.zeros((), jnp.float32)
        if self.perceptual_loss is not None and weights.perceptual_weight > 0:
            perceptual = self.perceptual_loss(frozen["perceptual"], decoded, images)
        adversarial = None
        if "discriminator" in frozen:  # only from the GAN's start step on
            fake_logits = self.discriminator.apply(frozen["discriminator"], decoded)
            adversarial = losses.generator_adversarial_loss(fake_logits)
        # Stage 2 sets quantizer_weight 0: the frozen quantizer's loss is a constant there.
        loss, metrics = losses.single_stage_generator_loss(
            reconstruction, perceptual, info, adversarial, frozen["step"], weights, self.model.quantize_mode
        )
        if self.model.quantize_mode == "vq":
            metrics["codebook_usage"] = codebook_usage(info["indices"], self.model.codebook_size)
            metrics.update({k: info[k] for k in CLUSTERING_STATS if k in info})
        metrics["loss"] = loss
        return loss, (metrics, jnp.clip(decoded, 0.0, 1.0))

    def gan_active(self, step: int) -> bool:
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
        """Hinge + LeCam update of the discriminator (run from the start step on, see `gan_active`)."""
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


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    frozen: dict[str, Any],
    *,
    recipe: TokenizerRecipe,
    gan_active: bool = True,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step of any recipe (jitted by the driver with donated state).

    `gan_active` (static) adds the adversarial term and the discriminator update:
    the driver compiles one step without and one with the GAN and switches at the
    start step, instead of a traced lax.cond (which XLA:CPU ran ~7x slower) or
    computing a discarded discriminator update on every early step.
    """
    rng = jax.random.fold_in(jax.random.PRNGKey(recipe.seed), state.step)
    discriminator = getattr(recipe, "discriminator", None)
    gan_active = gan_active and discriminator is not None
    context = {**frozen, "step": state.step}
    if gan_active:
        context["discriminator"] = state.discriminator["params"]

    def grad_fn(microbatch, key):
        grads, (metrics, reconstructions) = jax.grad(recipe.generator_loss, has_aux=True)(
            state.params, microbatch, key, context
        )
        return grads, metrics, reconstructions

    grads, metrics, reconstructions = accumulate(grad_fn, batch, rng, recipe.grad_accum_steps)
    updates, opt_state = recipe.optimizer.update(grads, state.opt_state, state.params)
    params, usage_ema = state.params, state.codebook_usage_ema
    if usage_ema is not None and "code_frequencies" in metrics:
        # As officially: revive dead codes in place, then apply the optimizer's update.
        # (With grad accumulation the statistics are micro-batch averages.)
        stats = {k: metrics.pop(k) for k in CLUSTERING_STATS}
        codebook, usage_ema = quantizers.clustering_update(
            params["params"]["quantize"]["codebook"], usage_ema, stats["code_frequencies"], stats["nearest_latents"]
        )
        params = {**params, "params": {**params["params"], "quantize": {"codebook": codebook}}}
    params = optax.apply_updates(params, updates)
    decay = optim.ema_decay(state.step, recipe.ema_decay, recipe.ema_warmup)
    metrics.update(grad_norm=optax.tree.norm(grads), learning_rate=recipe.learning_rate(state.step))
    # The discriminator sees the reconstructions of the generator's pre-update params, as officially.
    if gan_active:
        state, d_metrics = recipe.discriminator_step(state, batch["image"], reconstructions)
        metrics.update(d_metrics)
    elif discriminator is not None:
        metrics.update(recipe.idle_discriminator_metrics(state, batch["image"]))
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=optim.ema_update(state.ema_params, params, decay),
        codebook_usage_ema=usage_ema,
    )
    return new_state, metrics
