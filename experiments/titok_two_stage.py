"""TiTok two-stage recipe (the released L-32 / B-64 / S-128 and the paper's 512 px models).

Stage 1 trains encoder + quantizer + decoder to predict the proxy codes of a
frozen MaskGIT VQGAN; stage 2 freezes encoder / quantizer / latent tokens and
trains the decoder through the VQGAN pixel decoder.

  --config=experiments/titok_two_stage.py:s128            stage 1 of TiTok-S-128
  --config=experiments/titok_two_stage.py:s128,stage=2    stage 2
  --config=experiments/titok_two_stage.py:tiny            tiny CPU model, random teacher
"""

import dataclasses

import ml_collections

from titok_jax import configs, losses
from titok_jax.models import titok, vqgan
from titok_jax.recipes import defaults

# variant -> (encoder size, decoder size, num_latent_tokens, image_size)
VARIANTS = {
    "l32": ("large", "large", 32, 256),
    "b64": ("base", "base", 64, 256),
    "s128": ("small", "small", 128, 256),
    "l64_512": ("large", "large", 64, 512),
    "b128_512": ("base", "base", 128, 512),
    "tiny": None,
}

TINY_VQGAN = dict(filters=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, embedding_dim=32, codebook_size=64)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = configs.parse_arg(arg, VARIANTS, variant="s128", stage=1)
    if arg.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {arg.stage!r}.")
    config = defaults.base_config()
    config.recipe = f"two_stage_{arg.stage}"
    config.variant = arg.variant

    if arg.variant == "tiny":
        teacher = TINY_VQGAN
        model = dict(
            **defaults.TINY_VIT_FIELDS,
            num_latent_tokens=16,
            token_size=8,
            codebook_size=256,
        )
    else:
        teacher = vqgan.MASKGIT_VQGAN
        encoder_size, decoder_size, num_tokens, image_size = VARIANTS[arg.variant]
        model = dict(
            image_size=image_size,
            **titok.vit_fields("encoder", encoder_size),
            **titok.vit_fields("decoder", decoder_size),
            num_latent_tokens=num_tokens,
            token_size=12,
            codebook_size=4096,
        )
    model.update(
        quantize_mode="vq",
        use_l2_norm=True,
        commitment_cost=0.25,
        legacy_two_stage=True,
        with_pixel_decoder=arg.stage == 2,
        dtype="float32",
        remat_policy="none",  # none | full | dots: activation rematerialisation of the ViT blocks
        scan_layers=False,  # nn.scan over the ViT blocks: faster compiles, params stacked (exports unstack)
        # Variable-length tokens (docs/variable_length.md): none | uniform | pow2, in both stages alike (stage 2
        # starts from stage 1's learned mask vector).
        token_dropout="none",
        token_dropout_rate=1.0,  # with token_dropout: the share of training images that drop their tail
        token_dropout_full_pass=False,  # with token_dropout: decode all K tokens too; loss = full + weight x prefix
        token_dropout_prefix_weight=1.0,
        causal_latents=False,  # with token_dropout: latent i sees the image and latents <= i only
        **titok.pixel_decoder_fields(teacher),
    )
    config.model = ml_collections.ConfigDict(model)
    config.data.image_size = config.model.image_size
    if arg.variant.startswith("tiny"):
        defaults.shrink_for_cpu(config)

    # The frozen MaskGIT VQGAN whose codes are the stage-1 targets and whose
    # decoder initialises the stage-2 pixel decoder.
    config.teacher = ml_collections.ConfigDict(teacher)
    config.teacher.checkpoint = ""  # path to the MaskGIT VQGAN weights
    config.teacher.random_init = arg.variant == "tiny"  # only the tiny model may use a random teacher
    if arg.stage == 2:
        # Official stage 2: AdamW b2 0.999, 5k warmup, 500k steps, from a stage-1 checkpoint;
        # L2 + 0.1 ConvNeXt perceptual + 0.01 GAN from 20k steps.
        config.optimizer.b2 = 0.999
        config.discriminator.enabled = True
        if arg.variant != "tiny":
            config.optimizer.warmup_steps = 5_000
            config.total_steps = 500_000
            config.losses.update(dataclasses.asdict(losses.TWO_STAGE_2_LOSS_WEIGHTS))
            config.perceptual.update(lpips_weight=0.0, convnext_weight=1.0)
        else:
            config.losses.update(quantizer_weight=0.0, discriminator_weight=0.01)
    return config
