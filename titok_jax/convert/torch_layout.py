"""PyTorch state dicts <-> our nested parameter trees, both ways, key by key and shape by shape.

A converter is a list of `Entry`s: one per torch tensor, saying where it lives in
our tree and how its axes map (a transpose, then a reshape). Both directions come
from the same entry, so `tree -> state dict -> tree` is exact (bit-identical) by
construction. Several torch tensors may fill one leaf of ours (`slot`): HF BERT's
separate query / key / value weights become one fused qkv kernel.

Reading accepts `.safetensors` (no torch needed) and torch `.bin/.pth/.pt`
pickles (read with `torch.load(weights_only=True)`, so nothing in them runs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from titok_jax.files import atomic_write

Tree = dict[str, Any]
StateDict = Mapping[str, np.ndarray]

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_SHOWN_PROBLEMS = 20


# ---------------------------------------------------------------------------- reading / writing files


def read_state_dict(path: str | os.PathLike, drop_suffixes: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """A flat {name: float32 array} from a `.safetensors` file or a torch `.pth/.pt/.bin` state dict.

    Keys ending in one of `drop_suffixes` are left out before the float check,
    e.g. BatchNorm's integer `num_batches_tracked` counters, which no inference
    network reads.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{path!r} is not a readable .safetensors file: {err}") from err
    elif suffix in TORCH_SUFFIXES:
        state = _read_torch(path)
    else:
        raise ValueError(
            f"Cannot read {path!r}: expected a .safetensors file or a torch state dict ({', '.join(TORCH_SUFFIXES)})."
        )
    return {
        key: _as_float32(key, value, path) for key, value in state.items() if not key.endswith(tuple(drop_suffixes))
    }


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a `.safetensors` file or a torch state dict, without reading the tensors' data: the
    safetensors header, or a memory-mapped `torch.load` (so a model can be sized from its file cheaply)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{path!r} is not a readable .safetensors file: {err}") from err
    torch = _import_torch(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and weights_only errors all mean "not a state dict file"
        raise ValueError(f"{path!r} is not a readable PyTorch state dict: {err}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors).")
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _import_torch(path: str) -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"Reading the PyTorch file {path!r} needs torch: `pip install 'titok_jax[torch]'` (or `pip install "
            "torch`). Alternatively save the state dict as .safetensors where torch is installed and pass that "
            "file; it reads without torch."
        ) from err
    return torch


def _read_torch(path: str) -> dict[str, Any]:
    torch = _import_torch(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors all mean "not a state dict file"
        raise ValueError(f"{path!r} is not a readable PyTorch state dict: {err}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors).")
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path!r}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a flat state dict."
            )
        value = value.detach().cpu()
        arrays[key] = (value.float() if value.is_floating_point() else value).numpy()
    return arrays


def _as_float32(key: str, value: Any, path: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path!r}: {key!r} has dtype {array.dtype}; expected floating-point weights.")
    return array.astype(np.float32)


def save_safetensors(flat: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Writes {key: array} atomically (a temporary file renamed into place)."""
    from safetensors.numpy import save

    with atomic_write(path) as f:
        f.write(save({k: np.ascontiguousarray(v) for k, v in flat.items()}, metadata=metadata))


# ---------------------------------------------------------------------------- entries


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch tensor: its key and shape, where it goes in our tree and how its axes map.

    Ours = torch.transpose(perm).reshape(shape). With `slot=(axis, index)` the
    tensor is the index-th slice along `axis` of our leaf (several entries share it).
    """

    torch_key: str
    path: tuple[str, ...]
    torch_shape: tuple[int, ...]
    perm: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None  # ours (of this slice); default: the transposed torch shape
    slot: tuple[int, int] | None = None

    @property
    def permuted_shape(self) -> tuple[int, ...]:
        return self.torch_shape if self.perm is None else tuple(self.torch_shape[i] for i in self.perm)

    @property
    def ours_shape(self) -> tuple[int, ...]:
        return self.permuted_shape if self.shape is None else self.shape

    def to_ours(self, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value)
        if self.perm is not None:
            value = np.transpose(value, self.perm)
        return value.reshape(self.ours_shape)

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value).reshape(self.permuted_shape)
        if self.perm is not None:
            value = np.transpose(value, np.argsort(self.perm))
        return np.ascontiguousarray(value)


def conv(
    torch_prefix: str, path: tuple[str, ...], out_ch: int, in_ch: int, kernel: int, bias: bool = True
) -> list[Entry]:
    """nn.Conv2d (OIHW) -> flax Conv (HWIO)."""
    entries = [Entry(f"{torch_prefix}.weight", (*path, "kernel"), (out_ch, in_ch, kernel, kernel), (2, 3, 1, 0))]
    if bias:
        entries.append(Entry(f"{torch_prefix}.bias", (*path, "bias"), (out_ch,)))
    return entries


def conv1x1_as_dense(torch_prefix: str, path: tuple[str, ...], out_ch: int, in_ch: int) -> list[Entry]:
    """A 1x1 nn.Conv2d (out, in, 1, 1) -> a flax Dense kernel (in, out) + bias."""
    return [
        Entry(f"{torch_prefix}.weight", (*path, "kernel"), (out_ch, in_ch, 1, 1), (1, 0, 2, 3), (in_ch, out_ch)),
        Entry(f"{torch_prefix}.bias", (*path, "bias"), (out_ch,)),
    ]


def linear(
    torch_prefix: str, path: tuple[str, ...], out_features: int, in_features: int, bias: bool = True
) -> list[Entry]:
    """nn.Linear (out, in) -> flax Dense (in, out)."""
    entries = [Entry(f"{torch_prefix}.weight", (*path, "kernel"), (out_features, in_features), (1, 0))]
    if bias:
        entries.append(Entry(f"{torch_prefix}.bias", (*path, "bias"), (out_features,)))
    return entries


def norm(torch_prefix: str, path: tuple[str, ...], dim: int) -> list[Entry]:
    """LayerNorm / GroupNorm weight, bias -> scale, bias."""
    return [
        Entry(f"{torch_prefix}.weight", (*path, "scale"), (dim,)),
        Entry(f"{torch_prefix}.bias", (*path, "bias"), (dim,)),
    ]


def tensor(
    torch_key: str, path: tuple[str, ...], torch_shape: tuple[int, ...], shape: tuple[int, ...] | None = None
) -> list[Entry]:
    """A raw parameter, reshaped if `shape` is given."""
    return [Entry(torch_key, path, tuple(torch_shape), None, shape)]


def fused_attention(
    torch_prefix: str, path: tuple[str, ...], width: int, heads: int, qkv_bias: bool = True
) -> list[Entry]:
    """nn.MultiheadAttention (in_proj_weight (3W, W) q|k|v, out_proj) -> our MultiHeadAttention."""
    head_dim = width // heads
    entries = [
        Entry(
            f"{torch_prefix}.in_proj_weight",
            (*path, "qkv_kernel"),
            (3 * width, width),
            (1, 0),
            (width, 3, heads, head_dim),
        )
    ]
    if qkv_bias:
        entries.append(
            Entry(f"{torch_prefix}.in_proj_bias", (*path, "qkv_bias"), (3 * width,), None, (3, heads, head_dim))
        )
    return entries + attention_output(f"{torch_prefix}.out_proj", path, width, heads)


def attention_output(torch_prefix: str, path: tuple[str, ...], width: int, heads: int) -> list[Entry]:
    """The attention output Linear (W, W) -> out_kernel (heads, head_dim, W), out_bias."""
    return [
        Entry(f"{torch_prefix}.weight", (*path, "out_kernel"), (width, width), (1, 0), (heads, width // heads, width)),
        Entry(f"{torch_prefix}.bias", (*path, "out_bias"), (width,)),
    ]


# ---------------------------------------------------------------------------- conversion


def _problems_message(what: str, problems: Sequence[str], hint: str = "") -> str:
    shown = "\n  ".join(problems[:_SHOWN_PROBLEMS])
    if len(problems) > _SHOWN_PROBLEMS:
        shown += f"\n  ... and {len(problems) - _SHOWN_PROBLEMS} more"
    return f"Not a {what} state dict ({len(problems)} problems):\n  {shown}" + (f"\n{hint}" if hint else "")


def check_state_dict(
    state: StateDict, entries: Sequence[Entry], what: str, ignored_keys: Iterable[str] = (), hint: str = ""
) -> None:
    """Raises a ValueError naming every missing, mis-shaped or unexpected key."""
    # Missing and unexpected keys first: they tell a different model apart quickest.
    missing = [
        f"missing key {e.torch_key!r} (expected shape {e.torch_shape})" for e in entries if e.torch_key not in state
    ]
    known = {entry.torch_key for entry in entries}
    ignored = tuple(ignored_keys)
    unexpected = [
        f"unexpected key {key!r} (shape {tuple(np.shape(state[key]))})"
        for key in state
        if key not in known and not key.startswith(ignored)
    ]
    misshaped = [
        f"key {e.torch_key!r} has shape {tuple(np.shape(state[e.torch_key]))}, expected shape {e.torch_shape}"
        for e in entries
        if e.torch_key in state and tuple(np.shape(state[e.torch_key])) != e.torch_shape
    ]
    problems = missing + unexpected + misshaped
    if problems:
        raise ValueError(_problems_message(what, problems, hint))


def state_dict_to_tree(
    state: StateDict, entries: Sequence[Entry], what: str, ignored_keys: Iterable[str] = (), hint: str = ""
) -> Tree:
    """Validates `state` against `entries` (see check_state_dict), then builds our nested tree.

    `ignored_keys` are prefixes of keys accepted and dropped (e.g. non-parameter buffers).
    """
    check_state_dict(state, entries, what, ignored_keys, hint)
    slots: dict[tuple[str, ...], list[tuple[Entry, np.ndarray]]] = {}
    for entry in entries:
        slots.setdefault(entry.path, []).append((entry, entry.to_ours(np.asarray(state[entry.torch_key], np.float32))))
    tree: Tree = {}
    for path, parts in slots.items():
        if parts[0][0].slot is None:
            value = parts[0][1]
        else:
            axis = parts[0][0].slot[0]
            ordered = sorted(parts, key=lambda part: part[0].slot[1])
            value = np.stack([array for _, array in ordered], axis=axis)
        _set(tree, path, np.ascontiguousarray(value))
    return tree


def tree_to_state_dict(tree: Mapping[str, Any], entries: Sequence[Entry]) -> dict[str, np.ndarray]:
    """Our tree -> {torch key: array} in the torch layout (the exact inverse of state_dict_to_tree)."""
    state = {}
    for entry in entries:
        value = np.asarray(_get(tree, entry.path))
        if entry.slot is not None:
            value = np.take(value, entry.slot[1], axis=entry.slot[0])
        state[entry.torch_key] = entry.to_torch(value)
    return state


def expected_tree_shapes(entries: Sequence[Entry]) -> dict[str, tuple[int, ...]]:
    """{'a/b/leaf': shape} of the tree the entries build (slots stacked)."""
    shapes: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {}
    for entry in entries:
        key = "/".join(entry.path)
        counts[key] = counts.get(key, 0) + 1
        shapes[key] = entry.ours_shape
    for entry in entries:
        if entry.slot is not None:
            key = "/".join(entry.path)
            shape = list(entry.ours_shape)
            shape.insert(entry.slot[0], counts[key])
            shapes[key] = tuple(shape)
    return shapes


def _set(tree: Tree, path: tuple[str, ...], value: Any) -> None:
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for name in path:
        node = node[name]
    return node


# ---------------------------------------------------------------------------- our flat files


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array} (dtype kept)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = np.ascontiguousarray(np.asarray(value))
    return flat


def unflatten(flat: Mapping[str, Any]) -> Tree:
    tree: Tree = {}
    for key, value in flat.items():
        _set(tree, tuple(key.split("/")), value)
    return tree


def flatten_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Nested dict of arrays, ShapeDtypeStructs or shape tuples -> {'a/b/c': shape}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_shapes(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, tuple) else tuple(np.shape(value))
    return flat
