"""Stage 2 starts from a stage-1 checkpoint (EMA weights) plus the teacher's decoder and codebook."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from titok_jax.models import layer_stack
from titok_jax.train import teacher
from titok_jax.train.state import TrainState


def _stage1_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    stage1 = config.copy_and_resolve_references()
    stage1.recipe = "two_stage_1"
    stage1.model.with_pixel_decoder = False
    stage1.init_from = ""
    return stage1


def init_from_stage1(state: TrainState, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> TrainState:
    """Replaces the random params of a fresh stage-2 state by stage-1 EMA params + teacher decoder."""
    from titok_jax.train.loop import restore_newest  # the loop imports this module

    directory = config.init_from
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        directory = os.path.join(directory, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"config.init_from={config.init_from!r} is not a stage-1 workdir or checkpoints directory."
        )
    workdir = os.path.dirname(directory)
    # Stage 1 may have trained with another scan_layers than stage 2: it is restored in its own layout,
    # then its ViT blocks are stacked / unstacked into stage 2's.
    restored = restore_newest(_stage1_config(config), mesh, workdir)
    if restored is None:
        raise FileNotFoundError(f"No stage-1 checkpoint under {directory!r}.")
    _, _, stage1, _ = restored
    stage1_params = layer_stack.to_layout(stage1.ema_params["params"], config.model.get("scan_layers", False))

    _, teacher_variables = teacher.load_teacher(config.teacher, config.model.image_size, config.seed)
    params = dict(state.params["params"])
    for key, value in stage1_params.items():
        params[key] = value
    params["pixel_quantize"] = {"codebook": teacher_variables["params"]["quantizer"]["codebook"]}
    params["pixel_decoder"] = teacher_variables["params"]["decoder"]
    shardings = jax.tree.map(lambda x: x.sharding, state.params)
    loaded = jax.device_put({"params": params}, shardings)
    # Separate buffers: the train step donates the state, and a buffer donated twice is freed twice.
    return state.replace(params=loaded, ema_params=jax.tree.map(jnp.copy, loaded))
