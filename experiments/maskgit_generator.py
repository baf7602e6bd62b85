"""MaskGIT generators over TiTok tokens: class-conditional masked-token modelling.

  --config=experiments/maskgit_generator.py:l32   ViT (BERT) 177M over TiTok-L-32 tokens
  --config=experiments/maskgit_generator.py:b64   ViT (BERT) 177M over TiTok-B-64 tokens
  --config=experiments/maskgit_generator.py:s128  UViT 295M over TiTok-S-128 tokens
  --config=experiments/maskgit_generator.py:tiny  CPU-sized, over the tiny_vq tokenizer's tokens
  --config=experiments/maskgit_generator.py:tiny,tokenizer=tiny_fsq   over another titok_single_stage.py
      variant's tokens (tiny_fsq, tiny_lfq, bl64_fsq12, ...): the vocabulary follows its quantizer

Over a variable-length tokenizer (tokenizer=tiny_vq_nested, model.token_dropout uniform / pow2),
--config.prefix_lengths=uniform | pow2 | auto (the tokenizer's token_dropout) trains on prefixes of k tokens,
so that Generator.generate(num_tokens=k) samples k < K; "none" (the default) is the official recipe.

Set --config.tokenizer.workdir to the tokenizer's training workdir and --config.tokens_dir to
its pretokenized shards (`python -m titok_jax.pretokenize`); an empty tokens_dir tokenizes
config.data's images on the fly. Sampling settings are the official ones of each model.

Over the MaskGIT-VQGAN's raster-order codes (the official RAR's tokenizer; the file is its own config):
--config.tokenizer.workdir=/data/maskgit-vqgan-imagenet-f16-256.bin --config.tokenizer.config=
--config.model.codebook_size=1024 --config.model.num_tokens=256 --config.data.image_size=256.
"""

import os

import ml_collections

from titok_jax import configs
from titok_jax.recipes import defaults, generation_eval

_HERE = os.path.dirname(os.path.abspath(__file__))

# variant -> (architecture, tokenizer spec, sampling: num_steps, guidance_scale, randomize_temperature, schedule)
VARIANTS = {
    "l32": ("vit", "titok_two_stage.py:l32,stage=2", (8, 4.5, 9.5, "linear")),
    "b64": ("vit", "titok_two_stage.py:b64,stage=2", (8, 3.0, 11.0, "linear")),
    "s128": ("uvit", "titok_two_stage.py:s128,stage=2", (64, 6.9, 2.8, "power-cosine")),
    "tiny": ("vit", "titok_single_stage.py:tiny_vq", (8, 2.0, 1.0, "linear")),
}

# Official sizes: hidden, layers (UViT: in + out blocks), heads, FFN.
ARCHITECTURE_FIELDS = {
    "vit": dict(hidden_size=768, depth=24, num_heads=16, intermediate_size=3072, dropout=0.1, attention_dropout=0.1),
    "uvit": dict(hidden_size=1024, depth=20, num_heads=16, intermediate_size=4096),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = configs.parse_arg(arg, VARIANTS, variant="l32", tokenizer="")
    architecture, tokenizer_spec, (num_steps, guidance, temperature, schedule) = VARIANTS[arg.variant]
    if arg.tokenizer:
        tokenizer_spec = f"titok_single_stage.py:{arg.tokenizer}"
    tokenizer = configs.load_config(os.path.join(_HERE, tokenizer_spec))
    config = defaults.common_config()
    config.recipe = "maskgit"
    config.variant = arg.variant
    config.tokenizer = ml_collections.ConfigDict(
        dict(config=os.path.join(_HERE, tokenizer_spec), workdir="")  # workdir: the tokenizer's training workdir
    )
    config.tokens_dir = ""  # pretokenized shards; empty: tokenize config.data on the fly
    config.data = tokenizer.data  # for on-the-fly tokenization (and its class count)
    config.data.random_crop = False  # official generator data: center crop + random flip
    config.model = ml_collections.ConfigDict(
        dict(
            architecture=architecture,
            codebook_size=tokenizer.model.codebook_size,
            num_tokens=tokenizer.model.num_latent_tokens,
            num_classes=1000,
            dtype="bfloat16",
            **ARCHITECTURE_FIELDS[architecture],
        )
    )
    # Official: AdamW 2e-4, betas (0.9, 0.96), wd 0.03, 10k warmup, cosine to 1e-5 at 500k, clip 1, batch 2048.
    config.batch_size = 2048
    config.total_steps = 500_000
    config.optimizer.update(
        learning_rate=2e-4, b1=0.9, b2=0.96, weight_decay=0.03, warmup_steps=10_000, end_learning_rate=1e-5
    )
    # Prefix training (docs/variable_length.md): "none" | "uniform" | "pow2" | "auto" (the tokenizer's token_dropout).
    config.prefix_lengths = "none"
    config.losses = ml_collections.ConfigDict(dict(class_dropout=0.1, label_smoothing=0.1, unmasked_weight=0.1))
    config.sampling = ml_collections.ConfigDict(
        dict(
            num_steps=num_steps,
            guidance_scale=guidance,
            guidance_schedule=schedule,
            guidance_power=3.0,
            randomize_temperature=temperature,
            softmax_temperature_annealing=False,
        )
    )
    config.sample_every = 5_000  # EMA sample grid in TensorBoard (official generate_every)
    # In-training gFID / sFID / IS / precision / recall of EMA samples every `every` steps (0: off); reference:
    # an ADM reference batch, or empty for config.data's eval split (recipes/generation_eval.py).
    config.evaluation = ml_collections.ConfigDict(generation_eval.DEFAULTS)
    if arg.variant == "tiny":
        _shrink_for_cpu(config)
    return config


def _shrink_for_cpu(config: ml_collections.ConfigDict) -> None:
    """A short CPU run over the tokens of the README's tiny tokenizer (16 tokens, 256 codes)."""
    config.tokenizer.workdir = "/tmp/titok_tiny"  # the README's tokenizer run
    config.tokens_dir = "/tmp/titok_tiny_tokens"  # the README's pretokenize output
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
    config.ema.decay = 0.99
    config.log_every = 25
    config.checkpoint_every = 100
    config.sample_every = 200
