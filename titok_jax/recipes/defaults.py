"""Experiment defaults the recipes share: the fields of every config, the official tokenizer recipe
values, and the CPU shrink of the tiny variants. Experiment files start from these."""

from __future__ import annotations

import dataclasses

import ml_collections

from titok_jax import losses
from titok_jax.data.pipeline import default_data_config
from titok_jax.recipes import init_from
from titok_jax.train import writers

# The CPU-sized tokenizer: 32 px images, 4 px patches (8x8 grid), 2-layer 64-wide ViTs.
# init_std: the official 0.02 kernels are sized for 512-1024 wide ViTs; at width 64 the
# path image -> conv_out -> decoder_embed starts ~17x weaker than the positional
# embeddings and a 300-step run never leaves the mean image. 0.02 * sqrt(768 / 64) ~ 0.07
# restores the full-size balance (measured: held-out MSE 0.050 vs 0.081 at 300 steps).
TINY_VIT_FIELDS = dict(
    image_size=32,
    encoder_patch_size=4,
    decoder_patch_size=4,
    encoder_width=64,
    encoder_depth=2,
    encoder_num_heads=2,
    decoder_width=64,
    decoder_depth=2,
    decoder_num_heads=2,
    init_std=0.07,
    # The grid positions start as 2D sin-cos codes instead of random ones (models.layers.grid_positional_init).
    positional_init="sincos",
)


def common_config() -> ml_collections.ConfigDict:
    """Fields of every recipe (tokenizers and generator): seed, mesh, data, batch, optimizer, EMA, cadence."""
    config = ml_collections.ConfigDict()
    config.seed = 42
    # Mesh axis sizes; -1 fills with the remaining devices.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.data = default_data_config()
    config.batch_size = 256  # global, over all processes
    config.grad_accum_steps = 1  # micro-batches per step; batch_size must divide evenly
    config.total_steps = 1_000_000
    config.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-4,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=1e-4,
            warmup_steps=10_000,
            end_learning_rate=1e-5,
            grad_clip_norm=1.0,
            discriminator_learning_rate=1e-4,
        )
    )
    config.ema = ml_collections.ConfigDict(dict(decay=0.999, warmup=True))
    config.log_every = 50
    config.checkpoint_every = 5_000
    config.keep_checkpoints = 3
    # Summaries: TensorBoard always; --config.logging.wandb=True adds a W&B run (project / entity / name).
    config.logging = ml_collections.ConfigDict(writers.DEFAULTS)
    # Fine-tuning: start from trained weights (recipes.init_from; stage 2: the stage-1 workdir) and what trains.
    for name, value in init_from.DEFAULTS.items():
        config[name] = value
    return config


def base_config() -> ml_collections.ConfigDict:
    """Fields every tokenizer experiment shares, with the official ImageNet recipe values;
    experiment files fill in the model and override what differs."""
    config = common_config()
    # Loss weights (official names). Stage 1 reads quantizer_weight only.
    config.losses = ml_collections.ConfigDict(dataclasses.asdict(losses.SINGLE_STAGE_LOSS_WEIGHTS))
    # The GAN discriminator of stage 2 and single-stage (hinge + LeCam), trained from losses.discriminator_start.
    config.discriminator = ml_collections.ConfigDict(
        dict(enabled=False, hidden_channels=128, num_stages=3, blur_kernel_size=4, pooled_size=16)
    )
    # Perceptual networks (LPIPS-VGG, ConvNeXt-S) read from converted weight files.
    config.perceptual = ml_collections.ConfigDict(dict(lpips_weight=1.0, convnext_weight=0.1, weights=""))
    config.image_every = 5_000  # reconstruction grids and held-out reconstruction loss
    # Full eval-split evaluation (rFID, IS, codebook, PSNR, SSIM) every `every` steps and at the end; 0: never.
    # max_images > 0 evaluates only the first max_images of the split (whole eval batches).
    # inception_weights: inception.msgpack from titok_jax.convert.inception; empty = random Inception
    # (metrics then named *_random_inception).
    config.evaluation = ml_collections.ConfigDict(
        dict(every=50_000, metrics=("rfid", "is", "codebook", "psnr", "ssim"), inception_weights="", max_images=0)
    )
    config.eval_batch_size = 64
    return config


def shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
    """The tiny variants: a CPU run of about three minutes on 32 px synthetic shapes."""
    config.data.image_size = 32
    config.data.num_examples = 4096
    config.data.eval_num_examples = 256
    # One large centred shape per class on a flat background (colours random): on the full variation
    # (random place, size, geometry, gradient) the tiny tokenizer still renders flat colours after 600
    # steps and blobs after 2,400 (docs/tiny_tokenizer.md); here it renders the shapes.
    config.data.synthetic_variation = "centered"
    # Many small steps beat fewer large ones at this size (same 3 minutes on 2 cores, held-out
    # reconstructions of the right shape kind: 16 x 2,400 steps 87%, 32 x 1,800 56%, 8 x 2,400 74%).
    config.batch_size = 16
    config.eval_batch_size = 32
    config.total_steps = 2400
    config.optimizer.learning_rate = 1e-3
    config.optimizer.end_learning_rate = 1e-4
    config.optimizer.warmup_steps = 20
    config.optimizer.weight_decay = 1e-4
    config.ema.decay = 0.99
    config.log_every = 100
    config.checkpoint_every = 400
    config.image_every = 400
    # Once, at the end, on 32 held-out images (Inception at 299 px costs ~0.2 s per image on 2 CPU cores);
    # random Inception weights: the keys say *_random_inception.
    config.evaluation.every = config.total_steps
    config.evaluation.max_images = 32
    # No GAN by default: at 32 px the discriminator wins within ~50 steps and its term swamps
    # L2 (measured: held-out MSE 0.067 -> 0.086 once it starts). Set discriminator.enabled=True
    # to exercise it; these sizes keep it small. No perceptual loss (no weights here).
    config.discriminator.enabled = False
    config.discriminator.hidden_channels = 32
    config.discriminator.num_stages = 2
    config.discriminator.pooled_size = 8
    config.losses.discriminator_start = 200
    config.losses.perceptual_weight = 0.0
