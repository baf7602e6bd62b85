"""Fine-tuning starting points: a released (or your own) tokenizer or generator trained on on your images.

Weights only, like the official `experiment.init_weight`: a fresh optimizer and schedule from step 0, the EMA
starting at the loaded weights; rerunning the same command resumes (the source is not read again). Every
variant takes `init_from=` (a released hub directory, a titok_jax bundle or a training workdir) and, for
tokenizers, `root=` (an image folder: class subfolders, or just images) or `list_file=` (one path per
line, optionally a label):

  --config=experiments/finetune.py:vq,init_from=tokenizer_titok_bl64_vq8k_imagenet,root=/data/my_images
  --config=experiments/finetune.py:vae,init_from=tokenizer_titok_bl64_vae_c16_imagenet,list_file=/data/list.txt
  --config=experiments/finetune.py:decoder,init_from=tokenizer_titok_l32_imagenet,root=/data/my_images
      the decoder side of a released two-stage tokenizer (encoder, codebook and latent tokens frozen)
  --config=experiments/finetune.py:l64_512,init_from=tokenizer_titok_l32_imagenet,root=/data/imagenet/train
      TiTok-L-32 moved to 512 px and 64 tokens (the paper's L-64 at 512 px, never released): the grid
      positions interpolated, 32 new latent tokens, everything trained end to end
  --config=experiments/finetune.py:b128_512,init_from=tokenizer_titok_b64_imagenet,root=...   (B-64 -> B-128, 512 px)
  --config=experiments/finetune.py:generator_classes,init_from=generator_titok_l32_imagenet,num_classes=20,tokenizer=tokenizer_titok_l32_imagenet,tokens_dir=/data/my_tokens
      the released L-32 MaskGIT generator on your classes (class rows 0..num_classes-1 kept where they
      exist, new ones fresh): pretokenize your images with the tokenizer first
  --config=experiments/finetune.py:tiny_vq,init_from=/tmp/titok_tiny        the README's tiny tokenizer, on CPU
  --config=experiments/finetune.py:tiny_64px,init_from=/tmp/titok_tiny      the same moved from 32 to 64 px

Perceptual losses need their converted weights (--config.perceptual.weights, see the README), the two-stage
variants the MaskGIT VQGAN (--config.teacher.checkpoint, read only when a source lacks the pixel decoder).
"""

import os

import ml_collections

from titok_jax import configs

_HERE = os.path.dirname(os.path.abspath(__file__))

# variant -> (base experiment spec, what trains / moves)
VARIANTS = {
    "vq": "titok_single_stage.py:bl64_vq",
    "vae": "titok_single_stage.py:bl64_vae",
    "decoder": "titok_two_stage.py:l32,stage=2",
    "l64_512": "titok_two_stage.py:l64_512,stage=2",
    "b128_512": "titok_two_stage.py:b128_512,stage=2",
    "generator_classes": "maskgit_generator.py:l32",
    "tiny_vq": "titok_single_stage.py:tiny_vq",
    "tiny_64px": "titok_single_stage.py:tiny_vq",
}
MOVED_TO_512 = ("l64_512", "b128_512")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = configs.parse_arg(
        arg,
        VARIANTS,
        variant="tiny_vq",
        init_from="",
        root="",
        list_file="",
        num_classes=0,
        tokenizer="",
        tokens_dir="",
    )
    config = configs.load_config(os.path.join(_HERE, VARIANTS[arg.variant]))
    config.variant = f"finetune_{arg.variant}"
    config.init_from = arg.init_from
    _data(config, arg)
    if config.recipe == "maskgit":
        _generator(config, arg)
        return config
    # A short schedule at a tenth of the from-scratch peak, warm-up included: the weights are already good.
    config.optimizer.update(learning_rate=config.optimizer.learning_rate / 10, warmup_steps=1_000)
    config.total_steps, config.checkpoint_every, config.evaluation.every = 50_000, 2_500, 10_000
    if config.discriminator.enabled:
        # Releases carry no discriminator: a fresh one first catches up on the frozen-quality reconstructions.
        config.losses.discriminator_start = 2_000
    if arg.variant in MOVED_TO_512:
        # Trained end to end in the single-stage recipe (pixels through the VQGAN decoder, L2 + perceptual
        # + GAN): the encoder must learn the new grid and tokens, which stage 2 would keep frozen.
        config.recipe = "single_stage"
        config.losses.quantizer_weight = 1.0  # the encoder and codebook train again
        config.init_from_resize = ("grid_positions", "latent_tokens")
        config.optimizer.learning_rate = 1e-4
        config.total_steps = 200_000
    if arg.variant.startswith("tiny"):
        config.total_steps, config.checkpoint_every, config.image_every = 600, 200, 200
        config.optimizer.update(learning_rate=3e-4, warmup_steps=20)
        config.evaluation.every = config.total_steps
    if arg.variant == "tiny_64px":
        config.model.image_size = config.data.image_size = 64
        config.init_from_resize = ("grid_positions",)
    return config


def _data(config: ml_collections.ConfigDict, arg: ml_collections.ConfigDict) -> None:
    """Your images: a folder (with or without class subfolders) or a list file; else the base variant's data."""
    if arg.root and arg.list_file:
        raise ValueError("Give root= (an image folder) or list_file= (one path per line), not both.")
    # The image grids and evaluations read the same images unless --config.data.eval_root (eval_list_file)
    # names held-out ones.
    if arg.root:
        config.data.update(source="image_folder", root=arg.root, eval_root=arg.root)
    elif arg.list_file:
        config.data.update(source="image_list", list_file=arg.list_file, eval_list_file=arg.list_file)


def _generator(config: ml_collections.ConfigDict, arg: ml_collections.ConfigDict) -> None:
    """A released generator on new classes: its class rows resized, a short schedule."""
    if arg.num_classes:
        config.model.num_classes = arg.num_classes
        config.init_from_resize = ("class_table",)
    if arg.tokenizer:
        config.tokenizer.workdir = arg.tokenizer
    config.tokens_dir = arg.tokens_dir
    config.batch_size = 256
    config.total_steps, config.checkpoint_every = 50_000, 2_500
    config.optimizer.update(learning_rate=1e-4, warmup_steps=1_000)
