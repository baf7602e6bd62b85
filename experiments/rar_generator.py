"""RAR autoregressive generators (random-order annealing, adaLN) over a frozen tokenizer's tokens.

  --config=experiments/rar_generator.py:b      RAR-B 261M  (official sizes; sampler settings of each release)
  --config=experiments/rar_generator.py:l      RAR-L 462M
  --config=experiments/rar_generator.py:xl     RAR-XL 955M
  --config=experiments/rar_generator.py:xxl    RAR-XXL 1.5B
      --config.tokenizer.workdir=/data/maskgit-vqgan-imagenet-f16-256.bin   (or its msgpack; the default tokenizer)
  --config=experiments/rar_generator.py:b,tokenizer=titok_two_stage.py:l32,stage=2   over another tokenizer
  --config=experiments/rar_generator.py:tiny   CPU-sized, over the README's tiny_vq tokenizer's tokens
  --config=experiments/rar_generator.py:tiny,tokenizer=titok_single_stage.py:tiny_vq_nested   (any tiny variant)

The published sizes model the official tokenizer (`tokenizer=vqgan`, their default): the frozen MaskGIT-VQGAN
(1024 codes, 16 x 16 = 256 tokens in raster order at 256 px), named by config.tokenizer.workdir (its .bin or
msgpack) with an empty config.tokenizer.config. `tokenizer=FILE.py:VARIANT[,key=value...]` (the last arg: the rest
of the string is its spec) puts any titok_jax tokenizer underneath instead (config.tokenizer.config / workdir as
for the MaskGIT generators); the sequence length and vocabulary follow the tokenizer. Training: AdamW 4e-4,
betas (0.9, 0.96), wd 0.03,
62.5k warm-up, cosine to 1e-5 at 250k, batch 2048, clip 1, class dropout 0.1, no EMA; random orders until step
125k, annealed to raster by 187.5k.
"""

import os

import ml_collections

from titok_jax import configs
from titok_jax.data.pipeline import default_data_config
from titok_jax.models.rar import RAR_SIZES
from titok_jax.models.vqgan_tokenizer import OFFICIAL_IMAGE_SIZE, vqgan_tokenizer
from titok_jax.recipes import defaults, generation_eval

_HERE = os.path.dirname(os.path.abspath(__file__))
# The official tokenizer of the published sizes; set --config.tokenizer.workdir to where the file is.
VQGAN = "vqgan"
VQGAN_FILE = "maskgit-vqgan-imagenet-f16-256.bin"

# variant -> (size, official sampler: temperature, guidance scale, guidance power)
VARIANTS = {
    "b": ("B", (1.0, 16.0, 2.75)),
    "l": ("L", (1.02, 15.5, 2.5)),
    "xl": ("XL", (1.02, 6.9, 1.5)),
    "xxl": ("XXL", (1.02, 8.0, 1.2)),
    "tiny": (
        None,
        (1.0, 3.0, 0.0),
    ),  # constant guidance, as the official README demo (chosen on two seeds: docs/rar.md)
}


def _split_tokenizer(arg: str | None) -> tuple[str, str]:
    """(the other args, the tokenizer spec): a `tokenizer=` arg runs to the end of the string, so a spec with its
    own args (titok_two_stage.py:l32,stage=2) is not split at its commas."""
    head, marker, spec = (arg or "").partition("tokenizer=")
    return (head.rstrip(", "), spec.strip()) if marker else (arg or "", "")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    rest, tokenizer_arg = _split_tokenizer(arg)
    arg = configs.parse_arg(rest, VARIANTS, variant="b")
    size, (temperature, guidance, power) = VARIANTS[arg.variant]
    tokenizer_spec = tokenizer_arg or ("titok_single_stage.py:tiny_vq" if size is None else VQGAN)
    config = defaults.common_config()
    config.recipe = "rar"
    config.variant = arg.variant
    config.tokens_dir = ""  # pretokenized shards; empty: tokenize config.data on the fly
    if tokenizer_spec == VQGAN:
        # The official recipe: the frozen MaskGIT-VQGAN at 256 px. The file is its own config (sizes from its
        # shapes), so config.tokenizer.config stays empty; data.image_size sets the grid (16 x 16).
        vqgan = vqgan_tokenizer({"image_size": OFFICIAL_IMAGE_SIZE})
        config.tokenizer = ml_collections.ConfigDict(dict(config="", workdir=VQGAN_FILE))
        config.data = default_data_config()
        config.data.image_size = vqgan.image_size
        codebook_size, num_tokens = vqgan.codebook_size, vqgan.num_latent_tokens
    else:
        tokenizer = configs.load_config(os.path.join(_HERE, tokenizer_spec))
        config.tokenizer = ml_collections.ConfigDict(dict(config=os.path.join(_HERE, tokenizer_spec), workdir=""))
        config.data = tokenizer.data
        codebook_size, num_tokens = tokenizer.model.codebook_size, tokenizer.model.num_latent_tokens
    config.data.random_crop = False
    width, depth, mlp = RAR_SIZES[size or "B"]
    config.model = ml_collections.ConfigDict(
        dict(
            architecture="rar",
            codebook_size=codebook_size,
            num_tokens=num_tokens,
            num_classes=1000,
            hidden_size=width,
            depth=depth,
            num_heads=16,
            intermediate_size=mlp,
            dropout=0.1,
            attention_dropout=0.1,
            dtype="bfloat16",
        )
    )
    config.batch_size = 2048
    config.total_steps = 250_000
    config.optimizer.update(
        learning_rate=4e-4, b1=0.9, b2=0.96, weight_decay=0.03, warmup_steps=62_500, end_learning_rate=1e-5
    )
    config.randomness_anneal_start = 125_000
    config.randomness_anneal_end = 187_500
    config.ema.update(decay=0.0, warmup=False)  # the official trains without EMA: the "EMA" params are the params
    config.losses = ml_collections.ConfigDict(dict(class_dropout=0.1))
    config.sampling = ml_collections.ConfigDict(
        dict(temperature=temperature, guidance_scale=guidance, guidance_power=power, top_k=0, top_p=1.0, kv_cache=True)
    )
    config.sample_every = 5_000
    config.evaluation = ml_collections.ConfigDict(generation_eval.DEFAULTS)
    if size is None:
        _shrink_for_cpu(config, keep_tokenizer=tokenizer_spec == VQGAN)
    return config


def _shrink_for_cpu(config: ml_collections.ConfigDict, keep_tokenizer: bool = False) -> None:
    """A short CPU run over the README tiny tokenizer's tokens, the same cost class as maskgit_generator.py:tiny
    (`keep_tokenizer`: over the VQGAN file config.tokenizer.workdir names)."""
    if not keep_tokenizer:
        config.tokenizer.workdir = "/tmp/titok_tiny"
    config.tokens_dir = "/tmp/titok_tiny_tokens"
    config.model.update(
        num_classes=config.data.num_classes,
        hidden_size=128,
        depth=4,
        num_heads=4,
        intermediate_size=512,
        dtype="float32",
    )
    config.batch_size = 64
    config.total_steps = 1800
    config.optimizer.update(learning_rate=1e-3, warmup_steps=20, end_learning_rate=1e-4)
    # Random orders for the first half, raster by three quarters (the official 50% / 75% of training).
    config.randomness_anneal_start = 900
    config.randomness_anneal_end = 1350
    config.log_every = 25
    config.checkpoint_every = 100
    config.sample_every = 200
