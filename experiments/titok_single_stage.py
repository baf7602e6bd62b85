"""TiTok single-stage recipe: the newer VQ (8k x 64) and VAE (16 channel) tokenizers, and the lookup-free
quantizers (FSQ levels of the paper's table; LFQ and BSQ bits with MaskBit's / BSQ-ViT's entropy penalty).

The decoder predicts pixels directly (no proxy codes, no VQGAN).

  --config=experiments/titok_single_stage.py:bl64_vq
  --config=experiments/titok_single_stage.py:ll32_vae
  --config=experiments/titok_single_stage.py:bl64_fsq12   (FSQ 7x5x5x5x5 = 4,375 codes; fsq16: 64,000)
  --config=experiments/titok_single_stage.py:bl64_lfq12   (LFQ 12 bits = 4,096 codes; lfq16: 65,536)
  --config=experiments/titok_single_stage.py:bl64_bsq16   (BSQ 16 bits in groups of 8)
  --config=experiments/titok_single_stage.py:tiny_vq      (also tiny_vae, tiny_fsq, tiny_lfq, tiny_bsq)

Sweep (python -m launch.sweep --config=experiments/titok_single_stage.py:tiny_vq --root=DIR):
both tiny quantizers x two learning rates, and two seeds zipped with two batch sizes.
"""

import ml_collections

from titok_jax import configs, sweeps
from titok_jax.models import titok
from titok_jax.recipes import defaults

# variant -> (encoder size, decoder size, num_latent_tokens, quantize_mode, bits of a lookup-free quantizer)
VARIANTS = {
    "bl64_vq": ("base", "large", 64, "vq", 0),
    "bl128_vq": ("base", "large", 128, "vq", 0),
    "sl256_vq": ("small", "large", 256, "vq", 0),
    "ll32_vae": ("large", "large", 32, "vae", 0),
    "bl64_vae": ("base", "large", 64, "vae", 0),
    "bl128_vae": ("base", "large", 128, "vae", 0),
    "bl64_fsq12": ("base", "large", 64, "fsq", 12),
    "bl64_fsq16": ("base", "large", 64, "fsq", 16),
    "bl64_lfq12": ("base", "large", 64, "lfq", 12),
    "bl64_lfq16": ("base", "large", 64, "lfq", 16),
    "bl64_bsq16": ("base", "large", 64, "bsq", 16),
    "tiny_vq": (None, None, 16, "vq", 0),
    "tiny_vae": (None, None, 16, "vae", 0),
    "tiny_fsq": (None, None, 16, "fsq", 8),
    "tiny_lfq": (None, None, 16, "lfq", 8),
    "tiny_bsq": (None, None, 16, "bsq", 8),
    # Variable-length tokens: tiny_vq trained with nested dropout (each image keeps its first k of 16 tokens).
    "tiny_vq_nested": (None, None, 16, "vq", 0),
}
# BSQ's entropy groups (BSQ-ViT: 2**g sub-codes per group).
BSQ_GROUP_BITS = {16: 8, 8: 4}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = configs.parse_arg(arg, VARIANTS, variant="bl64_vq")
    encoder_size, decoder_size, num_tokens, quantize_mode, bits = VARIANTS[arg.variant]
    config = defaults.base_config()
    config.recipe = "single_stage"
    config.variant = arg.variant

    if encoder_size is None:  # tiny
        model = dict(defaults.TINY_VIT_FIELDS)
        token_size, codebook_size = (8, 256) if quantize_mode == "vq" else (4, 0)
    else:
        model = dict(
            image_size=256,
            **titok.vit_fields("encoder", encoder_size),
            **titok.vit_fields("decoder", decoder_size),
        )
        token_size, codebook_size = (64, 8192) if quantize_mode == "vq" else (16, 0)
    model.update(
        num_latent_tokens=num_tokens,
        token_size=token_size,
        quantize_mode=quantize_mode,
        codebook_size=codebook_size,
        use_l2_norm=False,
        commitment_cost=0.25,
        clustering_vq=quantize_mode == "vq",  # official: revive dead codes onto batch latents
        fsq_levels=(),
        bsq_group_size=0,
        entropy_temperature=0.01,
        entropy_sample_weight=1.0,  # LFQ: entropy = sample_weight x H(token) - codebook_weight x H(codebook)
        entropy_codebook_weight=1.0,  # (MaskBit's entropy_gamma)
        legacy_two_stage=False,
        with_pixel_decoder=False,
        dtype="float32",
        remat_policy="none",  # none | full | dots: activation rematerialisation of the ViT blocks
        scan_layers=False,  # nn.scan over the ViT blocks: faster compiles, params stacked (exports unstack)
        token_dropout="uniform" if arg.variant.endswith("_nested") else "none",  # variable-length tokens
        token_dropout_rate=1.0,  # with token_dropout: the share of training images that drop their tail
        token_dropout_full_pass=False,  # with token_dropout: decode all K tokens too; loss = full + weight x prefix
        token_dropout_prefix_weight=1.0,
        causal_latents=False,  # with token_dropout: latent i sees the image and latents <= i only
    )
    if encoder_size is None and quantize_mode == "vq":
        # Measured on the 300-step CPU run: with the official U(-1/N, 1/N) codebook, commitment
        # 0.25 pulls every latent onto one code per position (plain) or shrinks latents to ~0
        # before the decoder learns to read them, and held-out MSE never leaves the mean image
        # (0.084). l2-normalised codes with a light commitment reach 0.057 in the same run.
        model.update(use_l2_norm=True, commitment_cost=0.05)
    if arg.variant.endswith("_nested"):
        # Every image is decoded from all K tokens and from its first k, loss = full + 0.05 x prefix: with the
        # prefixes as the only decode (FlexTok's form) the tiny run's full code is 2x worse than without dropout at
        # this budget, and even 10% of images dropping their tail costs it 25-50% (docs/variable_length.md).
        model.update(token_dropout_full_pass=True, token_dropout_prefix_weight=0.05)
    if encoder_size is None:
        # A random 3 -> 3 last conv makes the tiny decoder learn colour directions one at a time (grey-yellow
        # blobs for 2000 steps); starting it at identity lets the run go on to shapes (models.layers.pixel_conv_init).
        model.update(pixel_conv_init="identity")
    if bits:  # token_size and codebook_size follow from the quantizer
        model.update(titok.quantizer_fields(quantize_mode, bits, BSQ_GROUP_BITS.get(bits, 0)))
        model["commitment_cost"] = {"fsq": 0.0, "lfq": 0.25, "bsq": 0.0}[quantize_mode]
        # MaskBit: entropy 0.02 (x3 annealed to x1 over 2k steps); BSQ-ViT: 0.1 with the same ramp.
        config.losses.entropy_weight = {"fsq": 0.0, "lfq": 0.02, "bsq": 0.1}[quantize_mode]
        if encoder_size is None and quantize_mode == "lfq":
            # The tiny ViT's latents start small: commitment 0.25 pins every bit to its position's sign within 200
            # steps (16 codes, the mean image: held-out MSE 0.073 after 600 steps) and at temperature 0.01 the
            # saturated softmax gives the batch-entropy term no gradient. MaskBit's entropy weight 0.02 pushes
            # every latent far from 0 so signs stop flipping; a tenth of it keeps the codes in use. Full budget,
            # held-out EMA MSE (seeds 42 / 1): 0.0108 / 0.0095 here, 0.0191 / 0.0148 with weight 0.02 and lr 1e-3
            # (tiny_vq: 0.0085 / 0.0108; docs/quantizers.md).
            model.update(commitment_cost=0.0, entropy_temperature=1.0)
            config.losses.entropy_weight = 0.002  # and learning rate 2e-3, set after the CPU shrink below
        if encoder_size is None and quantize_mode == "bsq":
            # BSQ-ViT's 0.1 ends the tiny run on the mean image (0.073 after 600 steps, 6% of the codes); a tenth
            # of it with lr 2e-3 learns the shapes (docs/quantizers.md).
            config.losses.entropy_weight = 0.01
    config.model = ml_collections.ConfigDict(model)
    # L2 + (LPIPS + 0.1 ConvNeXt) perceptual + quantizer / KL + GAN 0.1 from 200k steps.
    config.discriminator.enabled = True
    config.data.image_size = config.model.image_size
    if arg.variant.startswith("tiny"):
        defaults.shrink_for_cpu(config)
        if quantize_mode in ("lfq", "bsq"):
            config.optimizer.learning_rate = 2e-3
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """An example sweep over the tiny tokenizers (override dicts; `arg` picks the variant)."""
    del arg  # the same sweep for every base variant
    return sweeps.product(arg=["tiny_vq", "tiny_vae"], **{"optimizer.learning_rate": [1e-3, 3e-3]}) + sweeps.zipped(
        seed=[1, 2], batch_size=[16, 64]
    )
