r"""PyTorch weights of the perceptual-loss networks -> titok_jax parameter trees.

Sources (all three are what the official TiTok PerceptualLoss loads):
  * torchvision `vgg16` ImageNet weights (vgg16-397923af.pth): keys `features.{i}.{weight,bias}`;
    its `classifier.*` keys are accepted and ignored (LPIPS stops at relu5_3).
  * LPIPS v0.1 linear layers `vgg.pth` (keys `lin{k}.model.1.weight`): the `lpips` pip package
    ships this file as lpips/weights/v0.1/vgg.pth (md5 d507d7349b931f0638a25a48a722f98a, the very
    file the official code downloads as vgg_lpips.pth).
  * torchvision `convnext_small` ImageNet weights (convnext_small-0c510722.pth).

  python -m titok_jax.convert.perceptual --lpips_vgg=vgg16-397923af.pth \
      --lpips_lin=vgg.pth --convnext=convnext_small-0c510722.pth --output=DIR [--format=msgpack]

writes DIR/perceptual.safetensors (keys like `convnext/stage_2/block_26/fc1/kernel`) or
DIR/perceptual.msgpack, holding {"lpips": ..., "convnext": ...} for the networks given.
Inputs may be `.safetensors` (read without torch) or `.pth` / `.pt` / `.bin` torch files
(read with `torch.load(weights_only=True)`, so nothing in them is executed).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from titok_jax.models import perceptual as pm

StateDict = Mapping[str, np.ndarray]
Tree = dict[str, Any]

NETWORKS = ("lpips", "convnext")
PARAMS_BASENAME = "perceptual"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_CONVERT_COMMAND = (
    "python -m titok_jax.convert.perceptual --lpips_vgg=vgg16-397923af.pth --lpips_lin=vgg.pth "
    "--convnext=convnext_small-0c510722.pth --output=DIR"
)
_SOURCES_HELP = (
    "torchvision's ImageNet VGG16 (vgg16-397923af.pth) and ConvNeXt-Small (convnext_small-0c510722.pth) "
    "weights, and LPIPS' linear layers (vgg.pth, shipped in the `lpips` pip package as lpips/weights/v0.1/vgg.pth)"
)


# ---------------------------------------------------------------------------- reading


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
    elif suffix in _TORCH_SUFFIXES:
        state = _read_torch(path)
    else:
        raise ValueError(
            f"Cannot read {path!r}: expected a .safetensors file or a torch state dict ({', '.join(_TORCH_SUFFIXES)})."
        )
    return {
        key: _as_float32(key, value, path) for key, value in state.items() if not key.endswith(tuple(drop_suffixes))
    }


def _read_torch(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"Reading the PyTorch file {path!r} needs torch (`pip install torch`). Alternatively save the "
            "state dict as .safetensors where torch is installed and pass that file; it reads without torch."
        ) from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors all mean "not a state dict file"
        raise ValueError(f"{path!r} is not a readable PyTorch state dict: {err}") from err
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


# ---------------------------------------------------------------------------- key maps


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _linear_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.T  # (out, in) -> (in, out)


def _identity(value: np.ndarray) -> np.ndarray:
    return value


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One torch tensor: where it goes in our tree, the shape it must have, how to transform it."""

    torch_key: str
    path: tuple[str, ...]
    torch_shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] = _identity


def _conv_entries(prefix: str, path: tuple[str, ...], out_ch: int, in_ch: int, kernel: int) -> list[_Entry]:
    return [
        _Entry(f"{prefix}.weight", (*path, "kernel"), (out_ch, in_ch, kernel, kernel), _conv_kernel),
        _Entry(f"{prefix}.bias", (*path, "bias"), (out_ch,)),
    ]


def _linear_entries(prefix: str, path: tuple[str, ...], out_features: int, in_features: int) -> list[_Entry]:
    return [
        _Entry(f"{prefix}.weight", (*path, "kernel"), (out_features, in_features), _linear_kernel),
        _Entry(f"{prefix}.bias", (*path, "bias"), (out_features,)),
    ]


def _norm_entries(prefix: str, path: tuple[str, ...], dim: int) -> list[_Entry]:
    return [_Entry(f"{prefix}.weight", (*path, "scale"), (dim,)), _Entry(f"{prefix}.bias", (*path, "bias"), (dim,))]


def vgg16_entries() -> list[_Entry]:
    """torchvision `vgg16().features` convs up to relu5_3 -> {conv{level}_{i}}."""
    entries, index, in_ch = [], 0, 3
    for level, channels in enumerate(pm.VGG16_CHANNELS, start=1):
        if level > 1:
            index += 1  # the max pool before this level
        for i, out_ch in enumerate(channels, start=1):
            entries += _conv_entries(f"features.{index}", (f"conv{level}_{i}",), out_ch, in_ch, 3)
            index += 2  # conv, relu
            in_ch = out_ch
    return entries


def lpips_lin_entries() -> list[_Entry]:
    """LPIPS v0.1 `vgg.pth`: lin{k}.model.1.weight (1, C, 1, 1) -> lin_{k}/kernel (C, 1)."""
    return [
        _Entry(f"lin{k}.model.1.weight", (f"lin_{k}", "kernel"), (1, ch, 1, 1), lambda w: w[:, :, 0, 0].T)
        for k, ch in enumerate(pm.LPIPS_TAP_CHANNELS)
    ]


def convnext_entries(
    depths: Sequence[int] = (3, 3, 27, 3), dims: Sequence[int] = (96, 192, 384, 768), num_classes: int = 1000
) -> list[_Entry]:
    """torchvision `convnext_*` -> our ConvNeXtSmall tree (features.{2i+1} is stage i, features.{2i} downsample i)."""
    entries = _conv_entries("features.0.0", ("stem_conv",), dims[0], 3, 4)
    entries += _norm_entries("features.0.1", ("stem_norm",), dims[0])
    for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        if i > 0:
            entries += _norm_entries(f"features.{2 * i}.0", (f"downsample_{i}_norm",), dims[i - 1])
            entries += _conv_entries(f"features.{2 * i}.1", (f"downsample_{i}_conv",), dim, dims[i - 1], 2)
        for j in range(depth):
            prefix, path = f"features.{2 * i + 1}.{j}", (f"stage_{i}", f"block_{j}")
            entries.append(
                _Entry(f"{prefix}.layer_scale", (*path, "layer_scale"), (dim, 1, 1), lambda s: s.reshape(s.shape[0]))
            )
            entries += [
                _Entry(f"{prefix}.block.0.weight", (*path, "dwconv", "kernel"), (dim, 1, 7, 7), _conv_kernel),
                _Entry(f"{prefix}.block.0.bias", (*path, "dwconv", "bias"), (dim,)),
            ]
            entries += _norm_entries(f"{prefix}.block.2", (*path, "norm"), dim)
            entries += _linear_entries(f"{prefix}.block.3", (*path, "fc1"), 4 * dim, dim)
            entries += _linear_entries(f"{prefix}.block.5", (*path, "fc2"), dim, 4 * dim)
    entries += _norm_entries("classifier.0", ("head_norm",), dims[-1])
    entries += _linear_entries("classifier.2", ("head",), num_classes, dims[-1])
    return entries


# ---------------------------------------------------------------------------- conversion


def _convert(state: StateDict, entries: Sequence[_Entry], what: str, ignored_prefixes: Sequence[str] = ()) -> Tree:
    """Validates every key and shape of `state` against `entries`, then builds the nested tree."""
    problems = []
    for entry in entries:
        if entry.torch_key not in state:
            problems.append(f"missing key {entry.torch_key!r} (expected shape {entry.torch_shape})")
        elif tuple(state[entry.torch_key].shape) != entry.torch_shape:
            problems.append(
                f"key {entry.torch_key!r} has shape {tuple(state[entry.torch_key].shape)}, "
                f"expected shape {entry.torch_shape}"
            )
    known = {entry.torch_key for entry in entries}
    for key in state:
        if key not in known and not key.startswith(tuple(ignored_prefixes)):
            problems.append(f"unexpected key {key!r} (shape {tuple(np.shape(state[key]))})")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"Not a {what} state dict ({len(problems)} problems):\n  {shown}")
    tree: Tree = {}
    for entry in entries:
        node = tree
        for name in entry.path[:-1]:
            node = node.setdefault(name, {})
        node[entry.path[-1]] = np.ascontiguousarray(entry.transform(np.asarray(state[entry.torch_key], np.float32)))
    return tree


def convert_lpips(vgg16_state: StateDict, lin_state: StateDict) -> Tree:
    """torchvision vgg16 state dict + LPIPS `vgg.pth` -> LPIPS params {vgg, lin_0..lin_4}."""
    tree = {"vgg": _convert(vgg16_state, vgg16_entries(), "torchvision vgg16", ignored_prefixes=("classifier.",))}
    tree.update(_convert(lin_state, lpips_lin_entries(), "LPIPS vgg.pth (lin0..lin4)"))
    return tree


def convert_convnext_small(state: StateDict) -> Tree:
    """torchvision convnext_small state dict -> ConvNeXtSmall params."""
    return _convert(state, convnext_entries(), "torchvision convnext_small")


# ---------------------------------------------------------------------------- our files


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = np.ascontiguousarray(np.asarray(value, np.float32))
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> Tree:
    tree: Tree = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def save_perceptual_params(params: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes {"lpips": ..., "convnext": ...} to `.safetensors` ('/'-joined keys) or `.msgpack`."""
    path = os.fspath(path)
    unknown = set(params) - set(NETWORKS)
    if unknown:
        raise ValueError(f"Perceptual params hold networks {sorted(unknown)}; expected a subset of {NETWORKS}.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(flatten(params), path, metadata={"format": "titok_jax.perceptual"})
    elif path.endswith(".msgpack"):
        from flax import serialization

        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(unflatten(flatten(params))))
    else:
        raise ValueError(f"Cannot write {path!r}: use a .safetensors or .msgpack file name.")


def expected_shapes(network: str) -> Tree:
    """The param tree (of shapes) our module for `network` expects."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    # Param shapes do not depend on the image size; 32 px survives every downsampling.
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    if network == "lpips":
        variables = jax.eval_shape(lambda x: pm.LPIPS().init(jax.random.PRNGKey(0), x, x), image)
    elif network == "convnext":
        variables = jax.eval_shape(lambda x: pm.ConvNeXtSmall().init(jax.random.PRNGKey(0), x), image)
    else:
        raise ValueError(f"Unknown perceptual network {network!r}; expected one of {NETWORKS}.")
    return jax.tree.map(lambda x: tuple(x.shape), nn.meta.unbox(variables["params"]))


def check_params(params: Mapping[str, Any], network: str, source: str = "params") -> None:
    """Raises a ValueError naming every missing, unexpected or mis-shaped leaf of params[network]."""
    want = flatten_shapes(expected_shapes(network))
    have = {key: tuple(np.shape(value)) for key, value in flatten(params[network]).items()}
    problems = [f"missing {network}/{k} (expected shape {s})" for k, s in want.items() if k not in have]
    problems += [
        f"{network}/{k} has shape {have[k]}, expected shape {s}" for k, s in want.items() if k in have and have[k] != s
    ]
    problems += [f"unexpected {network}/{k} (shape {s})" for k, s in have.items() if k not in want]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"{source}: the {network} weights do not fit our model ({len(problems)} problems):\n  {shown}")


def flatten_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_shapes(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = tuple(value)
    return flat


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        for suffix in (".safetensors", ".msgpack"):
            candidate = os.path.join(path, PARAMS_BASENAME + suffix)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"No {PARAMS_BASENAME}.safetensors or {PARAMS_BASENAME}.msgpack in {path!r}. "
            f"Make it from {_SOURCES_HELP} with:\n  {_CONVERT_COMMAND}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Perceptual-loss weights not found at {path!r}. Expected the {PARAMS_BASENAME}.safetensors (or .msgpack) "
            f"file that the converter writes from {_SOURCES_HELP}:\n  {_CONVERT_COMMAND}"
        )
    return path


def load_perceptual_params(path: str | os.PathLike, networks: Sequence[str] | None = None) -> Tree:
    """Reads converted weights: {"lpips": ..., "convnext": ...} (numpy arrays).

    `path` is the file or the converter's output directory. `networks` names the
    ones the caller needs (default: whatever the file holds, at least one); each
    is validated key by key and shape by shape against our modules.
    """
    path = _resolve(os.fspath(path))
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            params = unflatten(load_file(path))
        except Exception as err:
            raise ValueError(f"{path!r} is not a readable .safetensors file: {err}") from err
    elif path.endswith(".msgpack"):
        from flax import serialization

        with open(path, "rb") as f:
            try:
                params = serialization.msgpack_restore(f.read())
            except Exception as err:
                raise ValueError(f"{path!r} is not a readable msgpack file: {err}") from err
    else:
        raise ValueError(
            f"Cannot read {path!r}: expected a .safetensors or .msgpack file written by {_CONVERT_COMMAND}"
        )
    if not isinstance(params, Mapping) or not params:
        raise ValueError(f"{path!r} holds no perceptual-loss weights; write it with:\n  {_CONVERT_COMMAND}")
    unknown = sorted(set(params) - set(NETWORKS))
    if unknown:
        raise ValueError(f"{path!r} holds {unknown}, which are not perceptual networks {NETWORKS}.")
    needed = tuple(networks) if networks is not None else tuple(params)
    for network in needed:
        if network not in params:
            raise ValueError(
                f"{path!r} holds {sorted(params)} but {network!r} is needed; convert its weights too:\n  {_CONVERT_COMMAND}"
            )
    for network in params:
        check_params(params, network, source=path)
    return dict(params)


# ---------------------------------------------------------------------------- CLI


def convert_files(
    output_dir: str,
    lpips_vgg: str | None = None,
    lpips_lin: str | None = None,
    convnext: str | None = None,
    file_format: str = "safetensors",
) -> str:
    """Converts the given files and writes them into output_dir; returns the written path."""
    if (lpips_vgg is None) != (lpips_lin is None):
        raise ValueError(
            "LPIPS needs both --lpips_vgg (torchvision vgg16 weights) and --lpips_lin (LPIPS vgg.pth; the `lpips` "
            "pip package ships it as lpips/weights/v0.1/vgg.pth)."
        )
    if lpips_vgg is None and convnext is None:
        raise ValueError(
            f"Nothing to convert: give --lpips_vgg with --lpips_lin, and/or --convnext. Sources: {_SOURCES_HELP}."
        )
    if file_format not in ("safetensors", "msgpack"):
        raise ValueError(f"--format must be safetensors or msgpack, got {file_format!r}.")
    params: Tree = {}
    if lpips_vgg is not None:
        params["lpips"] = convert_lpips(read_state_dict(lpips_vgg), read_state_dict(lpips_lin))
    if convnext is not None:
        params["convnext"] = convert_convnext_small(read_state_dict(convnext))
    for network in params:
        check_params(params, network, source="converted weights")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{PARAMS_BASENAME}.{file_format}")
    save_perceptual_params(params, path)
    return path


def _main() -> None:
    # Flags are defined only when run as a script, so importing this module (for
    # load_perceptual_params) never adds flags to another program's FLAGS.
    from absl import app, flags

    lpips_vgg = flags.DEFINE_string("lpips_vgg", None, "torchvision vgg16 weights (.pth or .safetensors).")
    lpips_lin = flags.DEFINE_string("lpips_lin", None, "LPIPS v0.1 vgg.pth linear layers (lin0..lin4).")
    convnext = flags.DEFINE_string("convnext", None, "torchvision convnext_small weights (.pth or .safetensors).")
    output = flags.DEFINE_string("output", None, "Output directory.", required=True)
    file_format = flags.DEFINE_enum("format", "safetensors", ["safetensors", "msgpack"], "Output file format.")

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        try:
            path = convert_files(output.value, lpips_vgg.value, lpips_lin.value, convnext.value, file_format.value)
        except (ValueError, FileNotFoundError, ImportError) as err:
            raise app.UsageError(str(err)) from err  # the message, without a traceback
        print(f"Wrote {path}")

    app.run(main)


if __name__ == "__main__":
    _main()
