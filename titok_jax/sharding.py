"""Mesh, logical axis names and the rules that map them onto mesh axes.

Every parameter in titok_jax carries logical axis names (the constants below).
A run maps them onto the physical mesh axes `data`, `fsdp` and `tensor` with a
list of rules from its config, so one code path serves 1 CPU, 8 fake devices,
a GPU box and a TPU pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Physical mesh axes, outermost first.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axis names of parameters and activations.
BATCH = "batch"
LENGTH = "length"  # token sequence
EMBED = "embed"  # transformer width
MLP = "mlp"  # transformer MLP hidden
HEADS = "heads"
HEAD_DIM = "head_dim"
QKV = "qkv"  # the stacked q/k/v axis of a fused projection
TOKEN = "token"  # quantizer token channels (token_size)
CODEBOOK = "codebook"  # codebook entries / logits over codes
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
KERNEL_HEIGHT = "kernel_height"
KERNEL_WIDTH = "kernel_width"
NORM = "norm"  # scales and biases of norms inside conv nets
IMAGE_HEIGHT = "image_height"
IMAGE_WIDTH = "image_width"
CHANNELS = "channels"
CLASSES = "classes"  # classifier logits of the frozen perceptual / FID networks
LAYERS = "layers"  # the stacked depth axis of scanned transformer blocks (models.layers.Transformer.scan_layers)

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# FSDP shards the large weight axes; tensor parallelism splits MLP and heads.
# A rule naming a mesh axis of size 1 is a no-op, so these defaults serve
# every mesh shape.
DEFAULT_RULES: LogicalRules = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (HEAD_DIM, None),
    (QKV, None),
    (TOKEN, None),
    (CODEBOOK, TENSOR),
    (CONV_IN, FSDP),
    (CONV_OUT, TENSOR),
    (KERNEL_HEIGHT, None),
    (KERNEL_WIDTH, None),
    (NORM, None),
    (IMAGE_HEIGHT, None),
    (IMAGE_WIDTH, None),
    (CHANNELS, None),
    (CLASSES, None),
    # Replicated: each scan iteration reads one layer's slice, so sharding depth would gather every step.
    (LAYERS, None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one of the sizes may be -1 (fill).

    Axis types are Auto: with this jax, `jax.make_mesh` defaults to Explicit
    axes, under which a sharded train step fails on sharded contractions.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1 (fill), got data={data} fsdp={fsdp} tensor={tensor}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"Cannot fill the mesh: {len(devices)} devices are not divisible by the fixed axes "
                f"(data={data}, fsdp={fsdp}, tensor={tensor})."
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"Mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {int(np.prod(sizes))} devices, "
            f"but {len(devices)} are available. Set one axis to -1 to fill the rest."
        )
    return jax.make_mesh(
        tuple(sizes),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops the mesh axes of any dimension they do not divide evenly (e.g. 3 RGB channels)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        fitted.append(axes if dim % size == 0 else None)
    return PartitionSpec(*fitted)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """NamedShardings for a tree of (possibly boxed) abstract values.

    Logical names map to mesh axes by `rules`; a dimension the mesh axes do not
    divide is replicated instead of failing, so one rule set serves every shape.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract_tree))
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    logical_specs = jax.tree.map(lambda s: nn.logical_to_mesh_axes(tuple(s), rules), specs, is_leaf=is_spec)

    def sharding(spec, shape):
        if type(shape) is not tuple:  # an empty node (e.g. optax's MaskedNode for frozen params): keep it
            return shape
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh))

    return jax.tree.map(sharding, logical_specs, shapes, is_leaf=is_spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shards the leading (batch) axis over data and fsdp."""
    return NamedSharding(mesh, PartitionSpec((DATA, FSDP), *([None] * (ndim - 1))))


def pad_batch(batch: np.ndarray, multiple: int, fill: str = "zeros") -> tuple[np.ndarray, int]:
    """Pads the leading axis up to a multiple of `multiple` (whole shards on every device); returns
    (padded, real size). `fill`: "zeros" or "repeat" (copies of the last example)."""
    size = batch.shape[0]
    padded = -(-size // multiple) * multiple
    if padded == size:
        return batch, size
    extra = (
        np.repeat(batch[-1:], padded - size, axis=0)
        if fill == "repeat"
        else np.zeros((padded - size, *batch.shape[1:]), batch.dtype)
    )
    return np.concatenate([batch, extra]), size


def process_local(batch: np.ndarray) -> np.ndarray:
    """This process's contiguous part of a global batch that every process holds in full."""
    return np.split(batch, jax.process_count())[jax.process_index()]


def to_host(tree: Any) -> Any:
    """Global (possibly multi-process sharded) arrays -> numpy, the whole value on every process.

    `jax.device_get` refuses arrays with shards on other processes' devices; those are
    gathered with `process_allgather` (every process must call this at the same point).
    """

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(leaf, tree)
