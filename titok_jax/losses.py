"""Pure loss functions of the TiTok tokenizer recipes, computed in float32.

They mirror the official PyTorch losses (bytedance/1d-tokenizer,
modeling/modules/losses.py): the hinge discriminator loss, the generator's
-mean(D(fake)), LeCam regularisation with running means of the logits, the
stage-1 proxy-code cross entropy, and the weighting of the stage-2 and
single-stage objectives. Nothing here holds state: the LeCam running means
are passed in and returned, and the step is an argument, so every function
can be traced inside a jitted train step (with a traced `step` too).
Metric names are the official ones, so logs compare side by side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]
_F32 = jnp.float32


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, _F32)


# --- adversarial terms -------------------------------------------------------


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    loss_real = jnp.mean(jax.nn.relu(1.0 - _f32(real_logits)))
    loss_fake = jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits)))
    return 0.5 * (loss_real + loss_fake)


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
    """-mean D(fake): the official generator term (not the hinge or non-saturating form)."""
    return -jnp.mean(_f32(fake_logits))


class LeCamEma(NamedTuple):
    """Running means of the discriminator's mean real / fake logit (official buffers, init 0)."""

    real: jax.Array
    fake: jax.Array


def init_lecam_ema() -> LeCamEma:
    return LeCamEma(real=jnp.zeros((), _F32), fake=jnp.zeros((), _F32))


def update_lecam_ema(ema: LeCamEma, real_logits: jax.Array, fake_logits: jax.Array, decay: float = 0.999) -> LeCamEma:
    """ema <- decay * ema + (1 - decay) * mean(logits); no gradient flows into the state."""
    real_mean = jax.lax.stop_gradient(jnp.mean(_f32(real_logits)))
    fake_mean = jax.lax.stop_gradient(jnp.mean(_f32(fake_logits)))
    return LeCamEma(
        real=_f32(ema.real) * decay + real_mean * (1.0 - decay),
        fake=_f32(ema.fake) * decay + fake_mean * (1.0 - decay),
    )


def lecam_regularization(
    real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array, ema_fake: jax.Array
) -> jax.Array:
    """relu(mean D(real) - ema_fake)^2 + relu(ema_real - mean D(fake))^2 (unweighted).

    As the official code, it compares the batch *means* of the logits with the
    running means, not each logit.
    """
    real_mean = jnp.mean(_f32(real_logits))
    fake_mean = jnp.mean(_f32(fake_logits))
    return jnp.square(jax.nn.relu(real_mean - _f32(ema_fake))) + jnp.square(jax.nn.relu(_f32(ema_real) - fake_mean))


def discriminator_factor(step: jax.Array | int, start_step: int, factor: float = 1.0) -> jax.Array:
    """`factor` from `start_step` on (step >= start_step), 0 before: the GAN schedule of both losses."""
    return jnp.where(jnp.asarray(step) >= start_step, _f32(factor), _f32(0.0))


# --- reconstruction terms ----------------------------------------------------


def proxy_code_cross_entropy(logits: jax.Array, codes: jax.Array) -> jax.Array:
    """Stage 1: mean cross entropy of decoder logits (B, h, w, N) against proxy codes (B, h, w)."""
    if logits.shape[:-1] != codes.shape:
        raise ValueError(f"logits {logits.shape} must be codes {codes.shape} + (codebook_size,).")
    log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
    picked = jnp.take_along_axis(log_probs, codes[..., None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def reconstruction_l2(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over every element (torch mse_loss, reduction='mean')."""
    return jnp.mean(jnp.square(_f32(x) - _f32(y)))


def kl_loss(kl_per_example: jax.Array) -> jax.Array:
    """Official reduction: sum of all KL terms divided by the batch size (axis 0)."""
    kl = _f32(kl_per_example)
    return jnp.sum(kl) / kl.shape[0]


# --- recipe objectives -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The `losses` block of an official recipe config (names as there).

    Fields without defaults are required by the official code too.
    """

    reconstruction_weight: float
    perceptual_weight: float
    quantizer_weight: float
    discriminator_weight: float
    discriminator_factor: float
    discriminator_start: int
    lecam_regularization_weight: float
    lecam_ema_decay: float = 0.999
    kl_weight: float = 1e-6
    logvar_init: float = 0.0  # VAE only: the reconstruction term is divided by exp(logvar_init)
    # LFQ / BSQ entropy penalty: entropy_weight times the quantizer's entropy_loss (MaskBit: H_sample -
    # H_codebook), annealed from (1 + entropy_anneal_factor)x at step 0 down to 1x at entropy_anneal_steps.
    entropy_weight: float = 0.0
    entropy_anneal_steps: int = 2000
    entropy_anneal_factor: float = 2.0

    @classmethod
    def from_config(
        cls, losses: Any, ignore: Iterable[str] = ("reconstruction_loss", "perceptual_loss")
    ) -> LossWeights:
        """From a mapping / ConfigDict; keys in `ignore` (non-weight choices) are skipped, unknown keys fail."""
        values = dict(losses.items()) if hasattr(losses, "items") else dict(losses)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields - set(ignore))
        if unknown:
            raise ValueError(f"Unknown loss config keys {unknown}; valid keys: {', '.join(sorted(fields))}.")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"Loss config is missing {missing}.")
        return cls(**{k: v for k, v in values.items() if k in fields})


# Official TiTok stage 2 (configs/training/TiTok/stage2/*.yaml): quantizer frozen, GAN 0.01 from 20k.
TWO_STAGE_2_LOSS_WEIGHTS = LossWeights(
    reconstruction_weight=1.0,
    perceptual_weight=0.1,  # ConvNeXt-S
    quantizer_weight=0.0,
    discriminator_weight=0.01,
    discriminator_factor=1.0,
    discriminator_start=20_000,
    lecam_regularization_weight=0.001,
)
# Official single stage (TA-TiTok configs): perceptual 1.1 x (1.0 LPIPS + 0.1 ConvNeXt) / 1.1, GAN 0.1 from 200k.
SINGLE_STAGE_LOSS_WEIGHTS = LossWeights(
    reconstruction_weight=1.0,
    perceptual_weight=1.1,
    quantizer_weight=1.0,
    discriminator_weight=0.1,
    discriminator_factor=1.0,
    discriminator_start=200_000,
    lecam_regularization_weight=0.001,
    kl_weight=1e-6,
)


def entropy_weight_at(step: jax.Array | int, weights: LossWeights) -> jax.Array:
    """MaskBit's annealed entropy weight: (1 + factor * max(0, 1 - step / anneal_steps)) * entropy_weight."""
    ramp = jnp.maximum(0.0, 1.0 - jnp.asarray(step, jnp.float32) / max(weights.entropy_anneal_steps, 1))
    return _f32(weights.entropy_weight) * (1.0 + weights.entropy_anneal_factor * ramp)


def entropy_penalty(
    aux: Mapping[str, jax.Array], step: jax.Array | int, weights: LossWeights
) -> tuple[jax.Array, Metrics]:
    """LFQ / BSQ: low entropy per token (confident codes), high entropy of the batch's average (all codes used);
    the quantizer's `entropy_loss` carries its own term weights (and BSQ's temperature)."""
    penalty = entropy_weight_at(step, weights) * _f32(aux["entropy_loss"])
    metrics = {"entropy_loss": penalty}
    metrics.update({k: _f32(aux[k]) for k in ("per_sample_entropy", "codebook_entropy")})
    return penalty, metrics


def single_stage_generator_loss(
    reconstruction_loss: jax.Array,
    perceptual_loss: jax.Array,
    quantizer_aux: Mapping[str, jax.Array],
    generator_adversarial: jax.Array | None,
    step: jax.Array | int,
    weights: LossWeights,
    quantize_mode: str = "vq",
) -> tuple[jax.Array, Metrics]:
    """The tokenizer's objective in the official ReconstructionLoss_Single_Stage.

    reconstruction_loss: unweighted reconstruction_l2 of inputs vs reconstructions.
    perceptual_loss: the perceptual model's loss (already its internal weighted average), unweighted.
    quantizer_aux: the quantizer's dict: `quantizer_loss`, `commitment_loss`, `codebook_loss` (vq)
      or `kl` per example (vae).
    generator_adversarial: generator_adversarial_loss(D(reconstructions)), or None when D was not run;
      it counts only when discriminator_factor(step) > 0 and discriminator_weight > 0.
    """
    if quantize_mode not in ("vq", "vae", "fsq", "lfq", "bsq"):
        raise ValueError(f"quantize_mode must be one of vq, vae, fsq, lfq, bsq; got {quantize_mode!r}.")
    factor = discriminator_factor(step, weights.discriminator_start, weights.discriminator_factor)
    gan = _f32(0.0) if generator_adversarial is None else _f32(generator_adversarial)
    gan = jnp.where((factor > 0.0) & (weights.discriminator_weight > 0.0), gan, 0.0)
    weighted_gan = weights.discriminator_weight * factor * gan
    reconstruction = weights.reconstruction_weight * _f32(reconstruction_loss)
    perceptual = weights.perceptual_weight * _f32(perceptual_loss)
    metrics: Metrics = {}
    if quantize_mode != "vae":
        regulariser = weights.quantizer_weight * _f32(quantizer_aux["quantizer_loss"])
        metrics["quantizer_loss"] = regulariser
        metrics["commitment_loss"] = _f32(quantizer_aux["commitment_loss"])
        metrics["codebook_loss"] = _f32(quantizer_aux["codebook_loss"])
        if "per_sample_entropy" in quantizer_aux:
            entropy, entropy_metrics = entropy_penalty(quantizer_aux, step, weights)
            regulariser = regulariser + entropy
            metrics.update(entropy_metrics)
    else:
        reconstruction = reconstruction / jnp.exp(_f32(weights.logvar_init))
        regulariser = weights.kl_weight * kl_loss(quantizer_aux["kl"])
        metrics["kl_loss"] = regulariser
    total = reconstruction + perceptual + regulariser + weighted_gan
    metrics.update(
        total_loss=total,
        reconstruction_loss=reconstruction,
        perceptual_loss=perceptual,
        weighted_gan_loss=weighted_gan,
        discriminator_factor=factor,
        d_weight=_f32(weights.discriminator_weight),
        gan_loss=gan,
    )
    return total, metrics


def discriminator_loss(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    lecam_ema: LeCamEma,
    step: jax.Array | int,
    weights: LossWeights,
) -> tuple[jax.Array, LeCamEma, Metrics]:
    """The discriminator's objective and the next LeCam state (official _forward_discriminator).

    loss = discriminator_factor * hinge + lecam_weight * LeCam(batch means, *old* running means);
    the running means are updated after. The official loop runs this step only
    from discriminator_start on; here, before it, the loss is 0 and the state
    is returned unchanged, so a train step may call it unconditionally. (Its D
    optimizer update must still be skipped then: AdamW's weight decay and step
    count would move even with zero gradients.)
    """
    active = jnp.asarray(step) >= weights.discriminator_start
    factor = discriminator_factor(step, weights.discriminator_start, weights.discriminator_factor)
    hinge = factor * hinge_discriminator_loss(real_logits, fake_logits)
    lecam = _f32(0.0)
    new_ema = lecam_ema
    if weights.lecam_regularization_weight > 0.0:
        lecam = weights.lecam_regularization_weight * lecam_regularization(
            real_logits, fake_logits, lecam_ema.real, lecam_ema.fake
        )
        updated = update_lecam_ema(lecam_ema, real_logits, fake_logits, weights.lecam_ema_decay)
        new_ema = jax.tree.map(lambda new, old: jnp.where(active, new, _f32(old)), updated, lecam_ema)
        lecam = jnp.where(active, lecam, 0.0)
    loss = hinge + lecam
    return (
        loss,
        new_ema,
        {
            "discriminator_loss": loss,
            "logits_real": jnp.mean(_f32(real_logits)),
            "logits_fake": jnp.mean(_f32(fake_logits)),
            "lecam_loss": lecam,
        },
    )
