"""Helpers for ml_collections experiment configs: variant args, loading, validation.

Experiment files live in experiments/ and define `get_config(arg)`. The arg is
`variant[,key=value...]`, e.g. `experiments/titok_two_stage.py:s128,stage=2`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from titok_jax import losses
from titok_jax.data.pipeline import default_data_config, validate_data_config

# ViT sizes of the official tokenizers: name -> (width, depth, num_heads).
VIT_SIZES = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


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


def vit_fields(prefix: str, size: str) -> dict[str, int]:
    """{prefix_width, prefix_depth, prefix_num_heads} of a named ViT size."""
    if size not in VIT_SIZES:
        raise ValueError(f"Unknown ViT size {size!r}; valid sizes: {', '.join(VIT_SIZES)}.")
    width, depth, heads = VIT_SIZES[size]
    return {f"{prefix}_width": width, f"{prefix}_depth": depth, f"{prefix}_num_heads": heads}


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_arg(arg: str | None, variants: Mapping[str, Any], **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `variant[,key=value,...]` into a ConfigDict with `variant` set.

    The first bare word is the variant and must be one of `variants`; keys must
    be among `defaults`. Errors list the valid choices.
    """
    parsed = dict(defaults)
    parsed["variant"] = defaults.get("variant")
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in defaults:
                raise ValueError(f"Unknown config arg {key!r} in {arg!r}; valid args: {', '.join(sorted(defaults))}.")
            parsed[key] = _parse_value(value)
        else:
            parsed["variant"] = part
    if parsed["variant"] not in variants:
        raise ValueError(
            f"Unknown variant {parsed['variant']!r}; valid variants: {', '.join(variants)}. "
            "Pick one with --config=experiments/FILE.py:VARIANT."
        )
    return ml_collections.ConfigDict(parsed)


def load_module(path: str) -> Any:
    """Imports an experiment file (`get_config`, optionally `get_sweep`)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/file.py[:arg]` the way absl's config_flags does."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    return module.get_config(arg) if arg else module.get_config()


# The MaskGIT VQGAN of the official recipes (ImageNet 256, f16, 1024 x 256 codes).
MASKGIT_VQGAN = dict(
    filters=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, embedding_dim=256, codebook_size=1024
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
    config.init_from = ""  # stage 2: a stage-1 workdir (or its checkpoints/STEP directory)
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


def pixel_decoder_fields(vqgan: Mapping[str, Any]) -> dict[str, Any]:
    """TiTok fields of a stage-2 pixel decoder initialised from the teacher `vqgan`."""
    return dict(
        proxy_codebook_size=vqgan["codebook_size"],
        pixel_decoder_filters=vqgan["filters"],
        pixel_decoder_channel_multipliers=tuple(vqgan["channel_multipliers"]),
        pixel_decoder_num_res_blocks=vqgan["num_res_blocks"],
        pixel_codebook_dim=vqgan["embedding_dim"],
    )


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks a config before anything compiles; raises ValueError naming the problem."""
    from titok_jax.models.titok import titok_from_config  # models never import configs

    for key in ("seed", "mesh", "model", "recipe"):
        if key not in config:
            raise ValueError(f"Config is missing the top-level field {key!r}.")
    mesh_keys = set(config.mesh.keys())
    if mesh_keys != {"data", "fsdp", "tensor"}:
        raise ValueError(f"config.mesh must have exactly data, fsdp and tensor; got {sorted(mesh_keys)}.")
    for axis, size in config.mesh.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"config.mesh.{axis} must be a positive int or -1 (fill), got {size!r}.")
    validate_data_config(config.data)
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"batch_size={config.batch_size} does not split into grad_accum_steps={config.grad_accum_steps} micro-batches."
        )
    if config.recipe == "generator":
        validate_generator_config(config)
        return
    model = titok_from_config(config.model)
    if config.data.image_size != model.image_size:
        raise ValueError(f"data.image_size={config.data.image_size} differs from model.image_size={model.image_size}.")
    if config.recipe.startswith("two_stage"):
        if not model.legacy_two_stage:
            raise ValueError("The two-stage recipe needs model.legacy_two_stage=True.")
        teacher = config.teacher
        factor = 2 ** (len(teacher.channel_multipliers) - 1)
        if factor != model.decoder_patch_size:
            raise ValueError(
                f"The teacher VQGAN downsamples by {factor} but model.decoder_patch_size={model.decoder_patch_size}: "
                "its proxy codes would not line up with the decoder grid."
            )
        if teacher.codebook_size != model.proxy_codebook_size:
            raise ValueError(
                f"teacher.codebook_size={teacher.codebook_size} differs from "
                f"model.proxy_codebook_size={model.proxy_codebook_size}."
            )
        if model.with_pixel_decoder and pixel_decoder_fields(teacher) != {
            k: getattr(model, k) for k in pixel_decoder_fields(teacher)
        }:
            raise ValueError("The stage-2 pixel decoder fields of config.model must equal the teacher VQGAN's.")


def _generator_tokenizer_model(tokenizer: ml_collections.ConfigDict) -> Any:
    """The tokenizer's model fields (a TiTok or its config.model): from an exported tokenizer's own config
    (bundle / official hub directory in tokenizer.workdir), else from tokenizer.config."""
    from titok_jax.tokenizer import exported_model, is_exported_tokenizer

    if tokenizer.workdir and is_exported_tokenizer(tokenizer.workdir):
        return exported_model(tokenizer.workdir)
    if not tokenizer.config:
        raise ValueError(
            "config.tokenizer.config must name the tokenizer's experiment config (file.py[:variant]), unless "
            "config.tokenizer.workdir is an exported tokenizer (titok_jax bundle or official hub directory)."
        )
    tokenizer_config = load_config(tokenizer.config)
    validate_config(tokenizer_config)
    return tokenizer_config.model


def validate_generator_config(config: ml_collections.ConfigDict) -> None:
    """The generator's own checks: model and sampling fields, and that the tokenizer (and the token
    shards, when given) produce the codes this generator models. Reads no weights."""
    from titok_jax.data.tokens import read_metadata
    from titok_jax.models.maskgit import maskgit_from_config
    from titok_jax.sampling import SamplingSettings

    model = maskgit_from_config(config.model)
    SamplingSettings.from_config(config.sampling)
    if not 0.0 <= config.losses.class_dropout < 1.0:
        raise ValueError(f"losses.class_dropout must be in [0, 1), got {config.losses.class_dropout}.")
    tok = _generator_tokenizer_model(config.tokenizer)
    source = config.tokenizer.config or config.tokenizer.workdir
    if tok.quantize_mode != "vq":
        raise ValueError(f"The generator models discrete codes; tokenizer {source!r} is a VAE.")
    for ours, theirs, what in (
        (model.codebook_size, tok.codebook_size, "codebook_size"),
        (model.num_tokens, tok.num_latent_tokens, "num_tokens (the tokenizer's num_latent_tokens)"),
    ):
        if ours != theirs:
            raise ValueError(
                f"Generator/tokenizer mismatch: config.model {what} = {ours} but the tokenizer "
                f"{source!r} has {theirs}. Set config.model to match the tokenizer."
            )
    if config.data.source == "synthetic" and config.data.num_classes > model.num_classes:
        raise ValueError(f"data.num_classes={config.data.num_classes} exceeds model.num_classes={model.num_classes}.")
    if config.tokens_dir:
        metadata = read_metadata(config.tokens_dir)
        for key, ours in (("codebook_size", model.codebook_size), ("num_tokens", model.num_tokens)):
            if metadata.get(key) != ours:
                raise ValueError(
                    f"The token shards in config.tokens_dir={config.tokens_dir!r} have {key}={metadata.get(key)} "
                    f"but the generator expects {ours}: they were written by another tokenizer. Pretokenize with "
                    "the generator's tokenizer, or point tokens_dir at its shards."
                )
    elif config.data.image_size != tok.image_size:
        raise ValueError(
            f"Tokenizing on the fly: data.image_size={config.data.image_size} differs from the tokenizer's "
            f"image_size={tok.image_size}."
        )
