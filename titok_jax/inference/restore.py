"""Params-only restore: the (EMA) parameters of a training workdir's newest step, built from the model alone.

No optimizer, teacher, perceptual network or discriminator is built or read: only the named part of the
saved state. The checkpoint keeps the ViT block layout its run trained with (model.scan_layers); the params
are read in that layout and handed out in the layout of the model the caller gives.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax

from titok_jax import checkpoint
from titok_jax import sharding as sh
from titok_jax.models import layer_stack


@dataclasses.dataclass(frozen=True)
class Restored:
    variables: Any  # {"params": ...} on the mesh, in the caller's model layout
    step: int
    part: str  # "ema_params" or "params"


def require_checkpoint(workdir: str, hint: str) -> int:
    """The newest step of `workdir`; a clear error ending with `hint` when there is none."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir!r} does not exist; {hint}")
    step = checkpoint.newest_step(workdir)
    if step is None:
        raise FileNotFoundError(f"{workdir!r} holds no checkpoint; {hint}")
    return step


def restore_params(
    workdir: str,
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    mesh: jax.sharding.Mesh,
    ema: bool = True,
    hint: str = "point it at a training workdir.",
) -> Restored:
    """The EMA params (or the raw params, `ema=False`) of the newest checkpoint in `workdir`, sharded on `mesh`
    by the model's logical axes. `example_inputs` are the arguments of `model.init` after the rng (abstract
    shapes are enough: nothing is initialised)."""
    step = require_checkpoint(workdir, hint)
    saved = checkpoint.saved_parts(workdir, step)
    part = "ema_params" if ema else "params"
    if not isinstance(saved, dict) or saved.get(part) is None:
        raise ValueError(
            f"Checkpoint step {step} in {workdir!r} holds no {part}; it is not a titok_jax training state."
        )
    wanted = getattr(model, "scan_layers", None)
    saved_layout = layer_stack.scanned_layout(saved[part])
    saved_model = model
    if wanted is not None and saved_layout is not None and saved_layout != wanted:
        saved_model = model.clone(scan_layers=saved_layout)
    rngs = {"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
    boxed = jax.eval_shape(lambda *args: saved_model.init(rngs, *args), *example_inputs)
    abstract = checkpoint.abstract_with_shardings(nn.meta.unbox(boxed), sh.logical_shardings(boxed, mesh))
    _check_structure(saved[part], abstract, workdir, step)
    with jax.set_mesh(mesh):
        variables = checkpoint.restore_parts(workdir, step, {part: abstract})[part]
    if saved_model is not model:
        variables = {**variables, "params": layer_stack.to_layout(variables["params"], wanted)}
    return Restored(variables=variables, step=int(step), part=part)


def _check_structure(saved: Any, abstract: Any, workdir: str, step: int) -> None:
    """Names the first differing key or shape before orbax fails with its own message."""
    saved_flat = {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(saved)}
    wanted_flat = {
        jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(abstract)
    }
    missing = sorted(set(wanted_flat) - set(saved_flat))
    unexpected = sorted(set(saved_flat) - set(wanted_flat))
    shapes = sorted(k for k in set(wanted_flat) & set(saved_flat) if wanted_flat[k] != saved_flat[k])
    if missing or unexpected or shapes:
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
            else f"{shapes[0]} is {saved_flat[shapes[0]]}, the config's model needs {wanted_flat[shapes[0]]}"
        )  # fmt: skip
        raise ValueError(
            f"Checkpoint step {step} in {workdir!r} holds another model than the config describes ({detail}); "
            "pass the config the run was trained with."
        )
