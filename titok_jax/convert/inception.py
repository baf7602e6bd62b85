r"""pytorch-fid's FID Inception weights -> the variables of `titok_jax.models.inception.FIDInceptionV3`.

Source: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, TF's 2015 FID
Inception graph ported to torch, which the user downloads themselves from

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

(nothing here downloads anything). It is a flat torch state dict of
`fid_inception_v3()`: per BasicConv2d `<block>.conv.weight` (out, in, kh, kw) and
`<block>.bn.{weight,bias,running_mean,running_var,num_batches_tracked}`, e.g.
`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`; then
`fc.weight` (1008, 2048) and `fc.bias`.

  python -m titok_jax.convert.inception --torch_weights=pt_inception-2015-12-05-6726825d.pth --output=DIR

writes DIR/inception.msgpack: the flax msgpack of {"params": ..., "batch_stats": ...}
with torch's module names ('.' -> nested dicts), conv kernels as HWIO, the fc
kernel as (in, out), BatchNorm weight/bias as `scale`/`bias` and the running
statistics as `batch_stats/.../bn/{mean,var}`.

Every expected key must be present with its exact shape. `num_batches_tracked`
counters are dropped (inference never reads them). Any other key is refused:
pytorch-fid loads this file strictly into a model without an auxiliary head, so
e.g. `AuxLogits.*` keys mean a different checkpoint (torchvision's ImageNet
Inception, whose features would give FIDs incomparable with published ones).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from titok_jax import cli
from titok_jax.convert import torch_layout as tl
from titok_jax.convert.torch_layout import read_state_dict

Tree = dict[str, Any]

PARAMS_FILENAME = "inception.msgpack"
# Written beside it: which file it was converted from, with that file's sha256.
SOURCE_FILENAME = "inception_source.json"
TORCH_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch hub names a weight file by the leading hex digits of its sha256: pytorch-fid's starts with these.
TORCH_WEIGHTS_SHA256_PREFIX = "6726825d"
TORCH_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{TORCH_WEIGHTS_FILENAME}"
CONVERT_COMMAND = f"python -m titok_jax.convert.inception --torch_weights={TORCH_WEIGHTS_FILENAME} --output=DIR"
_DROPPED_SUFFIXES = (".num_batches_tracked",)
_WHAT = f"pytorch-fid FID Inception-v3 ({TORCH_WEIGHTS_FILENAME})"

# (collection, our leaf name) -> torch leaf name.
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


# ---------------------------------------------------------------------------- key map


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """{(collection, module, ..., leaf): shape} of every variable FIDInceptionV3 holds."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from titok_jax.models.inception import INCEPTION_IMAGE_SIZE, FIDInceptionV3

    size = INCEPTION_IMAGE_SIZE  # any size works (inputs are resized); this one skips a no-op resize
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = nn.meta.unbox(jax.eval_shape(lambda x: FIDInceptionV3().init(jax.random.PRNGKey(0), x), image))
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def inception_entries() -> list[tl.Entry]:
    """One entry per torch tensor, derived from our module's variables (names mirror torch's modules)."""
    entries = []
    for path, shape in expected_shapes().items():
        collection, *modules, leaf = path
        torch_key = ".".join([*modules, _TORCH_LEAF[collection, leaf]])
        if leaf == "kernel" and len(shape) == 4:  # conv: HWIO <- OIHW
            kh, kw, cin, cout = shape
            entries.append(tl.Entry(torch_key, path, (cout, cin, kh, kw), (2, 3, 1, 0)))
        elif leaf == "kernel":  # fc: (in, out) <- (out, in)
            entries.append(tl.Entry(torch_key, path, shape[::-1], (1, 0)))
        else:
            entries.append(tl.Entry(torch_key, path, shape))
    return entries


# ---------------------------------------------------------------------------- conversion


def convert_state_dict(state: Mapping[str, Any]) -> Tree:
    """A pytorch-fid Inception state dict (torch tensors or arrays) -> {"params": ..., "batch_stats": ...}.

    Raises a ValueError naming the missing, mis-shaped or unexpected keys.
    """
    arrays = {}
    for key, value in state.items():
        if key.endswith(_DROPPED_SUFFIXES):
            continue
        if hasattr(value, "detach"):  # a torch tensor, without importing torch here
            value = value.detach().cpu().float().numpy()
        arrays[key] = np.asarray(value, np.float32)
    return tl.state_dict_to_tree(arrays, inception_entries(), _WHAT)


def save_inception_params(variables: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes {"params", "batch_stats"} as flax msgpack (float32 numpy leaves)."""
    import jax
    from flax import serialization

    tree = jax.tree.map(lambda x: np.ascontiguousarray(np.asarray(x, np.float32)), dict(variables))
    with open(os.fspath(path), "wb") as f:
        f.write(serialization.msgpack_serialize(tree))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_file(
    torch_weights: str | os.PathLike, output_dir: str | os.PathLike, allow_other_weights: bool = False
) -> str:
    """Converts pytorch-fid's .pth (or a .safetensors of the same state dict); returns DIR/inception.msgpack and
    writes DIR/inception_source.json (the source file and its sha256).

    A file whose sha256 does not start with pytorch-fid's 6726825d is refused, naming it (FIDs from other
    weights are not comparable with published ones), unless `allow_other_weights` (e.g. test weights); such a
    file's conversion is then marked, and evaluations refuse it (`check_source`)."""
    digest = sha256_of(torch_weights)
    fid_weights = digest.startswith(TORCH_WEIGHTS_SHA256_PREFIX)
    if not fid_weights and not allow_other_weights:
        raise ValueError(
            f"{os.fspath(torch_weights)!r} is not pytorch-fid's {TORCH_WEIGHTS_FILENAME}: its sha256 is {digest}, "
            f"which does not start with {TORCH_WEIGHTS_SHA256_PREFIX}. Download that file from {TORCH_WEIGHTS_URL} "
            "(or pass --allow_other_weights to convert other weights, which evaluations then refuse)."
        )
    variables = convert_state_dict(read_state_dict(torch_weights, drop_suffixes=_DROPPED_SUFFIXES))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(os.fspath(output_dir), PARAMS_FILENAME)
    save_inception_params(variables, path)
    source = {"source": os.path.basename(os.fspath(torch_weights)), "source_sha256": digest, "fid_weights": fid_weights}
    with open(os.path.join(os.fspath(output_dir), SOURCE_FILENAME), "w") as f:
        json.dump(source, f, indent=2)
    return path


def source_of(path: str | os.PathLike) -> dict[str, Any] | None:
    """What an inception.msgpack was converted from (None when no record sits beside it)."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    record = os.path.join(folder, SOURCE_FILENAME)
    if not os.path.isfile(record):
        return None
    with open(record) as f:
        return json.load(f)


def check_source(path: str | os.PathLike) -> dict[str, Any] | None:
    """Refuses weights converted from a file other than pytorch-fid's; returns the source record."""
    source = source_of(path)
    if source is not None and not source.get("fid_weights", False):
        raise ValueError(
            f"{os.fspath(path)!r} was converted from {source.get('source')!r} (sha256 {source.get('source_sha256')}), "
            f"not from pytorch-fid's {TORCH_WEIGHTS_FILENAME}: FID / IS from it are not comparable with published "
            f"numbers. Convert that file ({CONVERT_COMMAND}) or leave the weights empty for the labelled random "
            "network."
        )
    return source


# ---------------------------------------------------------------------------- loading


def _missing_message(path: str, setting: str) -> str:
    return (
        f"FID Inception weights not found at {path!r} ({setting}). Put the converted {PARAMS_FILENAME} there "
        f"(or point {setting} at the directory holding it). To make it, download pytorch-fid's weights yourself "
        f"from\n  {TORCH_WEIGHTS_URL}\nand convert them with\n  {CONVERT_COMMAND}\n"
        f"which writes DIR/{PARAMS_FILENAME}. Nothing is downloaded automatically."
    )


def check_variables(variables: Mapping[str, Any], source: str = "variables") -> None:
    """Raises a ValueError naming every missing, unexpected or mis-shaped leaf."""
    want = {"/".join(path): shape for path, shape in expected_shapes().items()}
    have: dict[str, tuple[int, ...]] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}/")
            else:
                have[f"{prefix}{key}"] = tuple(np.shape(value))

    walk(variables, "")
    problems = [f"missing {k} (expected shape {s})" for k, s in want.items() if k not in have]
    problems += [f"{k} has shape {have[k]}, expected shape {s}" for k, s in want.items() if k in have and have[k] != s]
    problems += [f"unexpected {k} (shape {s})" for k, s in have.items() if k not in want]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(
            f"{source}: not FID Inception variables ({len(problems)} problems):\n  {shown}\n"
            f"Re-create the file with:\n  {CONVERT_COMMAND}"
        )


def load_inception_params(path: str | os.PathLike, setting: str = "the configured Inception weights path") -> Tree:
    """Reads DIR/inception.msgpack (or the file itself): {"params": ..., "batch_stats": ...} of numpy arrays.

    `setting` names where the path came from (e.g. a config field) so that a
    missing file's error says what to change. Raises FileNotFoundError with the
    download URL and conversion command when there is no file, ValueError when
    the file is not FID Inception variables.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, PARAMS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_message(path, setting))
    from flax import serialization

    with open(path, "rb") as f:
        try:
            variables = serialization.msgpack_restore(f.read())
        except Exception as err:  # msgpack raises several unrelated error types
            raise ValueError(
                f"{path!r} is not a readable msgpack file: {err}\nWrite it with:\n  {CONVERT_COMMAND}"
            ) from err
    if not isinstance(variables, Mapping):
        raise ValueError(f"{path!r} holds no FID Inception variables; write it with:\n  {CONVERT_COMMAND}")
    check_variables(variables, source=path)
    return dict(variables)


# ---------------------------------------------------------------------------- CLI


@dataclasses.dataclass(frozen=True)
class Options:
    torch_weights: str = cli.option(
        None, f"pytorch-fid's {TORCH_WEIGHTS_FILENAME} (from {TORCH_WEIGHTS_URL}).", required=True
    )
    output: str = cli.option(None, f"Output directory; {PARAMS_FILENAME} is written there.", required=True)
    allow_other_weights: bool = cli.option(
        False, "Convert weights that are not pytorch-fid's (evaluations refuse them)."
    )


def run(config: None, options: Options) -> dict[str, str]:
    del config
    from absl import app

    try:
        return {"output": convert_file(options.torch_weights, options.output, options.allow_other_weights)}
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise app.UsageError(str(err)) from err  # the message, without a traceback


if __name__ == "__main__":
    cli.main(run, Options)
