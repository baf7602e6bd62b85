"""Tiny training configs for the driver tests, and a tokenizer workdir written without training."""

import json
import os

import jax
from helpers import GENERATOR, SINGLE_STAGE, TWO_STAGE

from titok_jax import checkpoint, configs, recipes, sweeps
from titok_jax import sharding as sh
from titok_jax.convert import generator as convert_generator
from titok_jax.convert import titok as convert_titok
from titok_jax.convert import torch_layout as tl
from titok_jax.train import run_config
from titok_jax.train.state import create_train_state


def tiny_config(spec: str = "single_stage:tiny_vq", **overrides):
    """A tiny config with small batches; `overrides` are dotted keys, e.g. {'losses.discriminator_start': 0}."""
    recipe, _, arg = spec.partition(":")
    path = {"single_stage": SINGLE_STAGE, "two_stage": TWO_STAGE}[recipe]
    config = configs.load_config(f"{path}:{arg}")
    config.batch_size = 8
    config.eval_batch_size = 8
    config.data.num_examples = 256
    config.data.eval_num_examples = 16
    config.total_steps = 4
    config.log_every = 2
    config.image_every = 4
    config.checkpoint_every = 2
    config.evaluation.every = 0  # the full-split evaluation (Inception at 299 px) is tested on its own
    return sweeps.apply_overrides(config, overrides)


def tiny_generator_config(
    tokenizer_workdir: str, tokens_dir: str = "", arg: str = "tiny", experiment: str = GENERATOR, **overrides
):
    """The tiny generator (MaskGIT, or RAR with experiment=RAR_GENERATOR), smaller still (1 layer, width 32),
    over a tokenizer written by `write_tokenizer`."""
    config = configs.load_config(f"{experiment}:{arg}")
    config.tokenizer.workdir = tokenizer_workdir
    config.tokens_dir = tokens_dir
    config.model.update(hidden_size=32, depth=1, num_heads=2, intermediate_size=64)
    config.batch_size = 8
    config.data.num_examples = 64
    config.total_steps = 4
    config.log_every = 2
    config.sample_every = 4
    config.checkpoint_every = 2
    return sweeps.apply_overrides(config, overrides)


def write_tokenizer(config, workdir, step=2, edit=None):
    """A tokenizer workdir as training leaves it (a checkpoint at `step`), without compiling a train step.

    `edit(state) -> state` changes the state before it is saved (e.g. EMA weights unlike the raw ones)."""
    recipe, _ = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = create_train_state(recipe, config, mesh)
    manager = checkpoint.make_manager(workdir, save_every=1, keep=1)
    run_config.record(workdir, config)
    with jax.set_mesh(mesh):
        state = init()
        checkpoint.save(manager, step, edit(state) if edit else state, None, force=True)
    manager.wait_until_finished()
    manager.close()


def build_recipe(config, random_frozen=False):
    """(recipe, frozen weights) of a config, through its recipe module."""
    return recipes.lookup(config).build(config, random_frozen=random_frozen)


def restore_state(config, workdir, mesh=None):
    """(recipe, full train state, step) of a workdir's newest checkpoint on `mesh` (default config.mesh),
    restored the way training resumes (the optimizer state included): the reference the params-only readers
    are checked against."""
    recipe, _ = build_recipe(config, random_frozen=True)
    mesh = mesh or sh.make_mesh(**config.mesh)
    abstract, _, _ = create_train_state(recipe, config, mesh)
    manager = checkpoint.make_manager(workdir, save_every=1, keep=1_000_000)
    try:
        step = manager.latest_step()
        with jax.set_mesh(mesh):
            state = checkpoint.restore(manager, abstract, data_iterator=None, step=step)
    finally:
        manager.close()
    return recipe, state, step


def write_official_generator(model, variables, sampling, directory) -> None:
    """The official hub layout (config.json + model.safetensors with the official keys) of a generator's
    model, {"params"} and sampler settings."""
    os.makedirs(directory)
    official = {
        "model_type": "ViT",
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.num_heads,
        "intermediate_size": model.intermediate_size,
        "dropout": model.dropout,
        "attn_drop": model.attention_dropout,
        "image_seq_len": model.num_tokens,
        "condition_num_classes": model.num_classes,
        "num_steps": sampling.num_steps,
        "guidance_scale": sampling.guidance_scale,
        "randomize_temperature": sampling.randomize_temperature,
        "guidance_decay": sampling.guidance_schedule,
    }
    config = {"model": {"vq_model": {"codebook_size": model.codebook_size}, "generator": official}}
    with open(os.path.join(directory, convert_titok.CONFIG_NAME), "w") as f:
        json.dump(config, f)
    state = convert_generator.state_dict_from_params(model, jax.device_get(variables))
    tl.save_safetensors(state, os.path.join(directory, convert_titok.SAFETENSORS_NAME), metadata={"format": "pt"})
