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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from titok_jax import cli
from titok_jax.convert import torch_layout as tl
from titok_jax.convert.torch_layout import read_state_dict  # noqa: F401  (re-exported)
from titok_jax.models import perceptual as pm

StateDict = Mapping[str, np.ndarray]
Tree = dict[str, Any]

NETWORKS = ("lpips", "convnext")
PARAMS_BASENAME = "perceptual"
_CONVERT_COMMAND = (
    "python -m titok_jax.convert.perceptual --lpips_vgg=vgg16-397923af.pth --lpips_lin=vgg.pth "
    "--convnext=convnext_small-0c510722.pth --output=DIR"
)
_SOURCES_HELP = (
    "torchvision's ImageNet VGG16 (vgg16-397923af.pth) and ConvNeXt-Small (convnext_small-0c510722.pth) "
    "weights, and LPIPS' linear layers (vgg.pth, shipped in the `lpips` pip package as lpips/weights/v0.1/vgg.pth)"
)


# ---------------------------------------------------------------------------- key maps


def vgg16_entries() -> list[tl.Entry]:
    """torchvision `vgg16().features` convs up to relu5_3 -> {conv{level}_{i}}."""
    entries, index, in_ch = [], 0, 3
    for level, channels in enumerate(pm.VGG16_CHANNELS, start=1):
        if level > 1:
            index += 1  # the max pool before this level
        for i, out_ch in enumerate(channels, start=1):
            entries += tl.conv(f"features.{index}", (f"conv{level}_{i}",), out_ch, in_ch, 3)
            index += 2  # conv, relu
            in_ch = out_ch
    return entries


def lpips_lin_entries() -> list[tl.Entry]:
    """LPIPS v0.1 `vgg.pth`: lin{k}.model.1.weight (1, C, 1, 1) -> lin_{k}/kernel (C, 1)."""
    return [
        tl.Entry(f"lin{k}.model.1.weight", (f"lin_{k}", "kernel"), (1, ch, 1, 1), (1, 0, 2, 3), (ch, 1))
        for k, ch in enumerate(pm.LPIPS_TAP_CHANNELS)
    ]


def convnext_entries(
    depths: Sequence[int] = (3, 3, 27, 3), dims: Sequence[int] = (96, 192, 384, 768), num_classes: int = 1000
) -> list[tl.Entry]:
    """torchvision `convnext_*` -> our ConvNeXtSmall tree (features.{2i+1} is stage i, features.{2i} downsample i)."""
    entries = tl.conv("features.0.0", ("stem_conv",), dims[0], 3, 4)
    entries += tl.norm("features.0.1", ("stem_norm",), dims[0])
    for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        if i > 0:
            entries += tl.norm(f"features.{2 * i}.0", (f"downsample_{i}_norm",), dims[i - 1])
            entries += tl.conv(f"features.{2 * i}.1", (f"downsample_{i}_conv",), dim, dims[i - 1], 2)
        for j in range(depth):
            prefix, path = f"features.{2 * i + 1}.{j}", (f"stage_{i}", f"block_{j}")
            entries += tl.tensor(f"{prefix}.layer_scale", (*path, "layer_scale"), (dim, 1, 1), (dim,))
            entries += tl.conv(f"{prefix}.block.0", (*path, "dwconv"), dim, 1, 7)
            entries += tl.norm(f"{prefix}.block.2", (*path, "norm"), dim)
            entries += tl.linear(f"{prefix}.block.3", (*path, "fc1"), 4 * dim, dim)
            entries += tl.linear(f"{prefix}.block.5", (*path, "fc2"), dim, 4 * dim)
    entries += tl.norm("classifier.0", ("head_norm",), dims[-1])
    entries += tl.linear("classifier.2", ("head",), num_classes, dims[-1])
    return entries


# ---------------------------------------------------------------------------- conversion


def convert_lpips(vgg16_state: StateDict, lin_state: StateDict) -> Tree:
    """torchvision vgg16 state dict + LPIPS `vgg.pth` -> LPIPS params {vgg, lin_0..lin_4}."""
    tree = {
        "vgg": tl.state_dict_to_tree(vgg16_state, vgg16_entries(), "torchvision vgg16", ignored_keys=("classifier.",))
    }
    tree.update(tl.state_dict_to_tree(lin_state, lpips_lin_entries(), "LPIPS vgg.pth (lin0..lin4)"))
    return tree


def convert_convnext_small(state: StateDict) -> Tree:
    """torchvision convnext_small state dict -> ConvNeXtSmall params."""
    return tl.state_dict_to_tree(state, convnext_entries(), "torchvision convnext_small")


# ---------------------------------------------------------------------------- our files


def flatten(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': float32 array}."""
    return {key: value.astype(np.float32) for key, value in tl.flatten(tree).items()}


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
            f.write(serialization.msgpack_serialize(tl.unflatten(flatten(params))))
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
    want = tl.flatten_shapes(expected_shapes(network))
    have = {key: tuple(np.shape(value)) for key, value in flatten(params[network]).items()}
    problems = [f"missing {network}/{k} (expected shape {s})" for k, s in want.items() if k not in have]
    problems += [
        f"{network}/{k} has shape {have[k]}, expected shape {s}" for k, s in want.items() if k in have and have[k] != s
    ]
    problems += [f"unexpected {network}/{k} (shape {s})" for k, s in have.items() if k not in want]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"{source}: the {network} weights do not fit our model ({len(problems)} problems):\n  {shown}")


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
            params = tl.unflatten(load_file(path))
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
        params["lpips"] = convert_lpips(tl.read_state_dict(lpips_vgg), tl.read_state_dict(lpips_lin))
    if convnext is not None:
        params["convnext"] = convert_convnext_small(tl.read_state_dict(convnext))
    for network in params:
        check_params(params, network, source="converted weights")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{PARAMS_BASENAME}.{file_format}")
    save_perceptual_params(params, path)
    return path


@dataclasses.dataclass(frozen=True)
class Options:
    lpips_vgg: str | None = cli.option(None, "torchvision vgg16 weights (.pth or .safetensors).")
    lpips_lin: str | None = cli.option(None, "LPIPS v0.1 vgg.pth linear layers (lin0..lin4).")
    convnext: str | None = cli.option(None, "torchvision convnext_small weights (.pth or .safetensors).")
    output: str = cli.option(None, "Output directory.", required=True)
    format: str = cli.option("safetensors", "Output file format.", choices=("safetensors", "msgpack"))


def run(config: None, options: Options) -> dict[str, str]:
    del config
    from absl import app

    try:
        path = convert_files(options.output, options.lpips_vgg, options.lpips_lin, options.convnext, options.format)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise app.UsageError(str(err)) from err  # the message, without a traceback
    return {"output": path}


if __name__ == "__main__":
    cli.main(run, Options)
