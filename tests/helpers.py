"""Shared test helpers."""

import pathlib
import socket

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_jax import sharding as sh
from titok_jax.configs import load_config
from titok_jax.models.titok import TiTok, titok_from_config

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

TWO_STAGE = str(EXPERIMENTS / "titok_two_stage.py")
SINGLE_STAGE = str(EXPERIMENTS / "titok_single_stage.py")
GENERATOR = str(EXPERIMENTS / "maskgit_generator.py")
RAR_GENERATOR = str(EXPERIMENTS / "rar_generator.py")

RNGS = {"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1)}


def model_for(spec: str) -> TiTok:
    """`file:arg` relative to experiments/ -> TiTok."""
    name, _, arg = spec.partition(":")
    return titok_from_config(load_config(f"{EXPERIMENTS / name}:{arg}").model)


def abstract_params(model: TiTok):
    images = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(lambda x: model.init(RNGS, x), images))


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def unused_port() -> int:
    """A localhost port nothing listens on (the OS picked it free; the probe socket is closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_sharded(init_fn, mesh, *args):
    """Runs `init_fn(*args)` so its outputs are created in the shardings its logical axes give on `mesh`;
    returns (unboxed values, shardings). (The library does this inside train.state.create_train_state.)"""
    abstract = jax.eval_shape(init_fn, *args)
    shardings = sh.logical_shardings(abstract, mesh)
    with jax.set_mesh(mesh):
        values = jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return values, shardings
