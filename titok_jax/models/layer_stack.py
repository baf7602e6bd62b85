"""The two layouts of a Transformer's block params, and conversions between them.

  unscanned   .../transformer/block_{i}/...    one subtree per block (models.layers.Transformer default)
  scanned     .../transformer/blocks/...       one subtree, every leaf with a leading axis of size depth
                                               (Transformer(scan_layers=True), nn.scan over the blocks)

The unscanned layout is the interchange layout: bundles, official checkpoints and the converters
use it; a scanned run keeps the scanned layout in its own checkpoints. The functions below work on
any nested mapping (params, EMA params, a whole {"params": ...} collection, orbax metadata) and
convert every `transformer` subtree in it; leaves may be numpy arrays, jax arrays or
jax.ShapeDtypeStructs (shapes, dtypes and NamedShardings follow the new axis).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from titok_jax.trees import BLOCKS, TRANSFORMER

_BLOCK_NAME = re.compile(r"block_(\d+)")


def stack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`transformer/block_{i}` subtrees -> `transformer/blocks` (leaves stacked along a new axis 0).

    A tree already in the scanned layout comes back unchanged (as plain dicts)."""
    return _map_transformers(tree, _stack)


def unstack_blocks(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`transformer/blocks` subtrees -> `transformer/block_{i}` (leaf axis 0 split into the blocks).

    A tree already in the unscanned layout comes back unchanged (as plain dicts)."""
    return _map_transformers(tree, _unstack)


def to_layout(tree: Mapping[str, Any], scan_layers: bool) -> dict[str, Any]:
    """The tree in the layout of a model with `scan_layers` (stacked if True, unstacked if False)."""
    return stack_blocks(tree) if scan_layers else unstack_blocks(tree)


def scanned_layout(tree: Mapping[str, Any]) -> bool | None:
    """True if the tree's transformer subtrees are scanned, False if unscanned, None if it has none.

    Raises ValueError for a tree that mixes the layouts (no model builds one)."""
    found: set[bool] = set()

    def note(transformer: Mapping[str, Any]) -> Mapping[str, Any]:
        if BLOCKS in transformer:
            found.add(True)
        if any(_BLOCK_NAME.fullmatch(str(key)) for key in transformer):
            found.add(False)
        return transformer

    _map_transformers(tree, note)
    if len(found) > 1:
        raise ValueError("The parameter tree mixes scanned (transformer/blocks) and unscanned (block_i) layouts.")
    return found.pop() if found else None


def _map_transformers(tree: Mapping[str, Any], fn: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of the nested mapping with every `transformer` subtree replaced by fn(subtree)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            value = fn(value) if key == TRANSFORMER else _map_transformers(value, fn)
        out[key] = value
    return out


def _block_indices(transformer: Mapping[str, Any]) -> list[int]:
    indices = sorted(int(m.group(1)) for key in transformer if (m := _BLOCK_NAME.fullmatch(str(key))))
    if indices != list(range(len(indices))):
        raise ValueError(f"Transformer blocks must be block_0 .. block_{{depth-1}}; got block indices {indices}.")
    if indices and BLOCKS in transformer:
        raise ValueError(f"A transformer subtree holds both {BLOCKS!r} and block_i entries: {sorted(transformer)}.")
    return indices


def _stack(transformer: Mapping[str, Any]) -> dict[str, Any]:
    indices = _block_indices(transformer)
    if not indices:
        return dict(transformer)
    blocks = [transformer[f"block_{i}"] for i in indices]
    rest = {key: value for key, value in transformer.items() if not _BLOCK_NAME.fullmatch(str(key))}
    return {**rest, BLOCKS: jax.tree.map(_stack_leaves, *blocks)}


def _unstack(transformer: Mapping[str, Any]) -> dict[str, Any]:
    _block_indices(transformer)  # refuses a mixed subtree
    if BLOCKS not in transformer:
        return dict(transformer)
    stacked = transformer[BLOCKS]
    depths = {leaf.shape[0] if leaf.shape else None for leaf in jax.tree.leaves(stacked)}
    if len(depths) != 1 or None in depths:
        raise ValueError(f"Scanned transformer blocks need one leading depth axis on every leaf; got depths {depths}.")
    depth = depths.pop()
    rest = {key: value for key, value in transformer.items() if key != BLOCKS}
    return {**rest, **{f"block_{i}": jax.tree.map(lambda x, i=i: _leaf_slice(x, i), stacked) for i in range(depth)}}


def _stack_leaves(*leaves: Any) -> Any:
    first = leaves[0]
    if any(leaf.shape != first.shape or leaf.dtype != first.dtype for leaf in leaves):
        raise ValueError(f"Blocks to stack differ in shape or dtype: {[(x.shape, x.dtype) for x in leaves]}.")
    if isinstance(first, jax.ShapeDtypeStruct):
        sharding = _spec_sharding(first.sharding, lambda spec: PartitionSpec(None, *spec))
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype, sharding=sharding)
    if all(isinstance(leaf, np.ndarray | np.generic) for leaf in leaves):
        return np.stack(leaves)  # host trees (exports) stay on the host
    return jnp.stack(leaves)


def _leaf_slice(leaf: Any, index: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        sharding = _spec_sharding(leaf.sharding, lambda spec: PartitionSpec(*tuple(spec)[1:]))
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)
    return leaf[index]


def _spec_sharding(sharding: Any, edit: Callable[[PartitionSpec], PartitionSpec]) -> NamedSharding | None:
    """A NamedSharding with its spec edited for the added / removed depth axis; other shardings are dropped."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, edit(sharding.spec))
    return None
