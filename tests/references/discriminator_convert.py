"""Official PyTorch NLayerDiscriminator state dict -> `NLayerDiscriminator` params.

The key map is the one in `titok_jax/models/discriminator.py`'s docstring. The
blur filters are buffers, not params: when present they are checked against
the filter we hard-code, then dropped. Every key and shape is validated first;
all problems are reported together.

The official loss module (ReconstructionLoss_Stage2 / _Single_Stage) holds the
discriminator under the prefix `discriminator.` and the LeCam running means as
buffers `ema_real_logits_mean` / `ema_fake_logits_mean` of shape (1,).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from titok_jax.losses import LeCamEma
from titok_jax.models.discriminator import BLUR_TAPS

Params = dict[str, Any]


def _conv_shapes(out_ch: int, in_ch: int, kernel: int) -> dict[str, tuple[int, ...]]:
    return {"weight": (out_ch, in_ch, kernel, kernel), "bias": (out_ch,)}


def expected_torch_params(
    num_channels: int = 3, hidden_channels: int = 128, num_stages: int = 3
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (our params path, torch shape) for every learnable tensor."""
    table: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}

    def add_conv(torch_prefix: str, path: tuple[str, ...], out_ch: int, in_ch: int, kernel: int) -> None:
        for suffix, shape in _conv_shapes(out_ch, in_ch, kernel).items():
            table[f"{torch_prefix}.{suffix}"] = ((*path, "kernel" if suffix == "weight" else "bias"), shape)

    add_conv("block_in.0", ("conv_in",), hidden_channels, num_channels, 5)
    in_ch = hidden_channels
    for i in range(num_stages):
        out_ch = hidden_channels * 2**i
        add_conv(f"blocks.{i}.0", (f"stage_{i}", "conv"), out_ch, in_ch, 3)
        table[f"blocks.{i}.2.weight"] = ((f"stage_{i}", "norm", "scale"), (out_ch,))
        table[f"blocks.{i}.2.bias"] = ((f"stage_{i}", "norm", "bias"), (out_ch,))
        in_ch = out_ch
    add_conv("to_logits.0", ("head_hidden",), in_ch, in_ch, 1)
    add_conv("to_logits.2", ("head_out",), 1, in_ch, 5)
    return table


def _blur_buffer(blur_kernel_size: int) -> np.ndarray:
    taps = np.asarray(BLUR_TAPS[blur_kernel_size], np.float32)
    kernel = np.outer(taps, taps)
    return (kernel / kernel.sum())[None, None]


def discriminator_params_from_torch(
    state_dict: Mapping[str, Any],
    *,
    num_channels: int = 3,
    hidden_channels: int = 128,
    num_stages: int = 3,
    blur_kernel_size: int = 4,
    prefix: str = "",
) -> Params:
    """Returns the `params` collection of `NLayerDiscriminator` (nested dict of float32 numpy arrays).

    `state_dict` maps torch keys to arrays (numpy, or anything np.asarray takes).
    Keys outside `prefix` (e.g. `prefix="discriminator."` on a whole loss-module
    state dict) are ignored; keys inside it must all be known.
    """
    if blur_kernel_size not in BLUR_TAPS:
        raise ValueError(f"blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {blur_kernel_size}.")
    ours = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    table = expected_torch_params(num_channels, hidden_channels, num_stages)
    buffers = {f"blocks.{i}.1.kernel": _blur_buffer(blur_kernel_size) for i in range(num_stages)}

    problems = []
    missing = sorted(set(table) - set(ours))
    unexpected = sorted(set(ours) - set(table) - set(buffers))
    if missing:
        problems.append(f"missing keys: {', '.join(prefix + k for k in missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(prefix + k for k in unexpected)}")
    for key, (_, shape) in table.items():
        if key in ours and tuple(np.shape(ours[key])) != shape:
            problems.append(f"{prefix}{key}: shape {tuple(np.shape(ours[key]))}, expected {shape}")
    for key, expected in buffers.items():
        if key not in ours:
            continue  # buffers are optional
        found = np.asarray(ours[key], np.float32)
        if found.shape != expected.shape or not np.allclose(found, expected, rtol=0, atol=1e-7):
            problems.append(
                f"{prefix}{key}: blur filter of shape {found.shape} differs from the {blur_kernel_size}-tap binomial "
                f"filter {expected.shape}; pass the matching blur_kernel_size"
            )
    if problems:
        raise ValueError(
            f"Not an NLayerDiscriminator state dict for num_channels={num_channels}, "
            f"hidden_channels={hidden_channels}, num_stages={num_stages}:\n  " + "\n  ".join(problems)
        )

    params: Params = {}
    for key, (path, _) in table.items():
        value = np.asarray(ours[key], np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return params


def lecam_ema_from_torch(state_dict: Mapping[str, Any], prefix: str = "") -> LeCamEma:
    """The LeCam running means of an official loss-module state dict."""
    values = []
    for name in ("ema_real_logits_mean", "ema_fake_logits_mean"):
        key = prefix + name
        if key not in state_dict:
            raise ValueError(f"missing key {key!r}: the official loss module has it only when LeCam weight > 0.")
        value = np.asarray(state_dict[key], np.float32)
        if value.size != 1:
            raise ValueError(f"{key}: expected a single value, got shape {value.shape}.")
        values.append(value.reshape(()))
    return LeCamEma(real=values[0], fake=values[1])
