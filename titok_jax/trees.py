"""Parameter-tree paths and the validation of loaded trees against what a model expects."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import jax

# How the models name their ViT blocks in parameter paths: `transformer/block_{i}`, or `transformer/blocks`
# with every leaf stacked along a leading `layers` axis when the blocks are scanned (models.layer_stack).
TRANSFORMER = "transformer"
BLOCKS = "blocks"


def path_name(path: Any) -> str:
    """'/'-joined names of a jax key path, e.g. 'params/encoder/ln_pre/scale'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a '/'-joined parameter name (below 'params') matches one of the patterns: a glob over the whole
    name ('decoder/*', '*/positional_embedding', 'encoder/transformer/block_1[01]/*') or a name prefix
    ('decoder' names everything below it)."""
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p.rstrip("/") + "/") for p in patterns)


def _flatten(tree: Any) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(path): leaf for path, leaf in flat}


def check_tree_matches(loaded: Any, expected: Any, source: str) -> None:
    """Raises ValueError naming every missing, unexpected or mis-shaped key.

    `expected` may hold arrays or ShapeDtypeStructs (e.g. from jax.eval_shape).
    """
    have, want = _flatten(loaded), _flatten(expected)
    # Shape mismatches first: they say most about which model the file belongs to.
    problems = [
        f"key {k} has shape {tuple(have[k].shape)}, expected {tuple(want[k].shape)}"
        for k in sorted(set(have) & set(want))
        if tuple(have[k].shape) != tuple(want[k].shape)
    ]
    problems += [f"missing key {k} (expected shape {tuple(want[k].shape)})" for k in sorted(set(want) - set(have))]
    problems += [f"unexpected key {k} (shape {tuple(have[k].shape)})" for k in sorted(set(have) - set(want))]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(f"{source} does not fit the model: {shown}.")
