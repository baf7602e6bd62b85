r"""The MaskGIT VQGAN's two published checkpoints -> our `VQGAN` variables.

  * The original JAX checkpoint of google-research/maskgit (`tokenizer_imagenet256_checkpoint`):
    `flax.serialization.to_bytes` of {"params": {encoder, quantizer, decoder}}, the very tree our
    modules use, so it is only read and checked.
  * The PyTorch port TiTok's repo ships (`maskgit-vqgan-imagenet-f16-256.bin`, keys `encoder.*`,
    `decoder.*`, `quantize.embedding.weight`): mapped here, module by module.

Mapping of the port (L levels, B res blocks each):
  encoder.conv_in -> encoder/Conv_0; encoder.down.{l}.block.{j} -> encoder/ResBlock_{l*B+j};
  encoder.mid.{j} -> encoder/ResBlock_{L*B+j}; encoder.norm_out -> GroupNorm_0; encoder.conv_out -> Conv_1.
  decoder.conv_in -> decoder/Conv_0; decoder.mid.{j} -> ResBlock_{j};
  decoder.up.{l}.block.{j} -> ResBlock_{B + (L-1-l)*B + j} (levels run top-down);
  decoder.up.{l}.upsample_conv -> Conv_{L-l}; decoder.norm_out -> GroupNorm_0; decoder.conv_out -> Conv_L.
  ResnetBlock: norm1/conv1/norm2/conv2/nin_shortcut -> GroupNorm_0/Conv_0/GroupNorm_1/Conv_1/Conv_2.
  quantize.embedding.weight -> quantizer/codebook.

  python -m titok_jax.convert.vqgan --checkpoint=maskgit-vqgan-imagenet-f16-256.bin --output=vqgan.msgpack

writes the flax msgpack `config.teacher.checkpoint` reads (the teacher also reads the .bin directly).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.serialization

from titok_jax import cli
from titok_jax.convert import torch_layout as tl
from titok_jax.files import atomic_write

Tree = dict[str, Any]
PORT_NAME = "MaskGIT VQGAN PyTorch port (maskgit-vqgan-imagenet-f16-256.bin)"


def _res_block(torch_prefix: str, path: tuple[str, ...], in_ch: int, out_ch: int) -> list[tl.Entry]:
    entries = tl.norm(f"{torch_prefix}.norm1", (*path, "GroupNorm_0"), in_ch)
    entries += tl.conv(f"{torch_prefix}.conv1", (*path, "Conv_0"), out_ch, in_ch, 3, bias=False)
    entries += tl.norm(f"{torch_prefix}.norm2", (*path, "GroupNorm_1"), out_ch)
    entries += tl.conv(f"{torch_prefix}.conv2", (*path, "Conv_1"), out_ch, out_ch, 3, bias=False)
    if in_ch != out_ch:
        entries += tl.conv(f"{torch_prefix}.nin_shortcut", (*path, "Conv_2"), out_ch, out_ch, 1, bias=False)
    return entries


def encoder_entries(
    torch_prefix: str, path: tuple[str, ...], filters: int, channel_multipliers: Sequence[int], num_res_blocks: int,
    embedding_dim: int,
) -> list[tl.Entry]:  # fmt: skip
    entries = tl.conv(f"{torch_prefix}.conv_in", (*path, "Conv_0"), filters, 3, 3, bias=False)
    channels, block = filters, 0
    for level, multiplier in enumerate(channel_multipliers):
        for j in range(num_res_blocks):
            out_ch = filters * multiplier
            prefix = f"{torch_prefix}.down.{level}.block.{j}"
            entries += _res_block(prefix, (*path, f"ResBlock_{block}"), channels, out_ch)
            channels, block = out_ch, block + 1
    for j in range(num_res_blocks):
        entries += _res_block(f"{torch_prefix}.mid.{j}", (*path, f"ResBlock_{block}"), channels, channels)
        block += 1
    entries += tl.norm(f"{torch_prefix}.norm_out", (*path, "GroupNorm_0"), channels)
    entries += tl.conv(f"{torch_prefix}.conv_out", (*path, "Conv_1"), embedding_dim, channels, 1)
    return entries


def decoder_entries(
    torch_prefix: str, path: tuple[str, ...], filters: int, channel_multipliers: Sequence[int], num_res_blocks: int,
    embedding_dim: int, output_channels: int = 3,
) -> list[tl.Entry]:  # fmt: skip
    levels = len(channel_multipliers)
    channels = filters * channel_multipliers[-1]
    entries = tl.conv(f"{torch_prefix}.conv_in", (*path, "Conv_0"), channels, embedding_dim, 3)
    block = 0
    for j in range(num_res_blocks):
        entries += _res_block(f"{torch_prefix}.mid.{j}", (*path, f"ResBlock_{block}"), channels, channels)
        block += 1
    for level in reversed(range(levels)):
        out_ch = filters * channel_multipliers[level]
        for j in range(num_res_blocks):
            prefix = f"{torch_prefix}.up.{level}.block.{j}"
            entries += _res_block(prefix, (*path, f"ResBlock_{block}"), channels, out_ch)
            channels, block = out_ch, block + 1
        if level > 0:
            prefix = f"{torch_prefix}.up.{level}.upsample_conv"
            entries += tl.conv(prefix, (*path, f"Conv_{levels - level}"), out_ch, out_ch, 3)
    entries += tl.norm(f"{torch_prefix}.norm_out", (*path, "GroupNorm_0"), channels)
    entries += tl.conv(f"{torch_prefix}.conv_out", (*path, f"Conv_{levels}"), output_channels, channels, 3)
    return entries


def vqgan_port_entries(
    filters: int = 128,
    channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
    num_res_blocks: int = 2,
    embedding_dim: int = 256,
    codebook_size: int = 1024,
) -> list[tl.Entry]:
    """Entries of the whole PyTorch port -> {"encoder", "quantizer", "decoder"} (our VQGAN params)."""
    sizes = (filters, tuple(channel_multipliers), num_res_blocks, embedding_dim)
    entries = encoder_entries("encoder", ("encoder",), *sizes)
    entries += decoder_entries("decoder", ("decoder",), *sizes)
    entries += tl.tensor("quantize.embedding.weight", ("quantizer", "codebook"), (codebook_size, embedding_dim))
    return entries


def is_torch_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith((*tl.TORCH_SUFFIXES, ".safetensors"))


# Keys only the port has (a TiTok state dict also holds quantize.embedding.weight, but no conv encoder).
PORT_MARKERS = ("encoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight", "quantize.embedding.weight")
JAX_SUFFIX = ".msgpack"


def port_fields(shapes: Mapping[str, Sequence[int]], what: str = PORT_NAME) -> dict[str, Any]:
    """The VQGAN fields (filters, channel_multipliers, num_res_blocks, embedding_dim, codebook_size) of a port
    state dict, read off its tensor shapes: conv_in's outputs, the down levels and their blocks, the codebook."""
    missing = [key for key in PORT_MARKERS if key not in shapes]
    if missing:
        raise ValueError(f"{what} is not a MaskGIT VQGAN PyTorch port: it has no {', '.join(missing)}.")
    filters = int(shapes["encoder.conv_in.weight"][0])  # torch convs are (out, in, kh, kw)
    levels = 0
    while f"encoder.down.{levels}.block.0.conv1.weight" in shapes:
        levels += 1
    num_res_blocks = 0
    while f"encoder.down.0.block.{num_res_blocks}.conv1.weight" in shapes:
        num_res_blocks += 1
    multipliers = [int(shapes[f"encoder.down.{level}.block.0.conv1.weight"][0]) // filters for level in range(levels)]
    codebook_size, embedding_dim = (int(n) for n in shapes["quantize.embedding.weight"])
    return dict(
        filters=filters, channel_multipliers=tuple(multipliers), num_res_blocks=num_res_blocks,
        embedding_dim=embedding_dim, codebook_size=codebook_size,
    )  # fmt: skip


def tree_fields(params: Mapping[str, Any], what: str = "the JAX checkpoint") -> dict[str, Any]:
    """The VQGAN fields of our parameter tree ({encoder, quantizer, decoder}), read off its shapes: the encoder
    holds (levels + 1) x num_res_blocks ResBlocks, the decoder levels + 1 convs."""
    try:
        encoder, decoder = params["encoder"], params["decoder"]
        codebook_size, embedding_dim = (int(n) for n in params["quantizer"]["codebook"].shape)
        filters = int(encoder["Conv_0"]["kernel"].shape[-1])  # flax convs are (kh, kw, in, out)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(
            f"{what} is not a MaskGIT VQGAN ({{encoder, quantizer, decoder}} with encoder/Conv_0 and "
            f"quantizer/codebook): {type(err).__name__} {err}."
        ) from err
    levels = sum(1 for name in decoder if name.startswith("Conv_")) - 1
    blocks = sum(1 for name in encoder if name.startswith("ResBlock_"))
    if levels < 1 or blocks % (levels + 1):
        raise ValueError(f"{what}: {blocks} encoder ResBlocks do not fit {levels} levels of a MaskGIT VQGAN.")
    num_res_blocks = blocks // (levels + 1)
    multipliers = [
        int(encoder[f"ResBlock_{level * num_res_blocks}"]["Conv_0"]["kernel"].shape[-1]) // filters
        for level in range(levels)
    ]
    return dict(
        filters=filters, channel_multipliers=tuple(multipliers), num_res_blocks=num_res_blocks,
        embedding_dim=embedding_dim, codebook_size=codebook_size,
    )  # fmt: skip


def is_vqgan_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a MaskGIT VQGAN file: a flax msgpack (the JAX checkpoint, or our converted port), or
    a PyTorch / safetensors state dict with the port's keys (read from its header, not its weights)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if path.lower().endswith(JAX_SUFFIX):
        return True
    return is_torch_file(path) and all(key in _shapes(path) for key in PORT_MARKERS)


def read_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The VQGAN fields of a checkpoint file (either form), from its shapes."""
    path = os.fspath(path)
    if is_torch_file(path):
        return port_fields(_shapes(path), repr(path))
    return tree_fields(load_vqgan_variables(path, {})["params"], repr(path))


def load_vqgan_file(path: str | os.PathLike) -> tuple[dict[str, Any], Tree]:
    """(VQGAN fields, {"params": ...}) of a checkpoint file (either form), its sizes read off its shapes.
    The msgpack is read once; its tree is checked against the model by the caller."""
    path = os.fspath(path)
    if is_torch_file(path):
        fields = port_fields(_shapes(path), repr(path))
        return fields, load_vqgan_variables(path, fields)
    variables = load_vqgan_variables(path, {})
    return tree_fields(variables["params"], repr(path)), variables


@functools.lru_cache(maxsize=8)
def _cached_shapes(path: str, mtime_ns: int, size: int) -> dict[str, tuple[int, ...]]:
    del mtime_ns, size  # the cache key: a rewritten file is read again
    return tl.read_shapes(path)


def _shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Header shapes, cached per file version: validation, loading and the shard checks each ask."""
    stat = os.stat(path)
    return _cached_shapes(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def load_vqgan_variables(path: str | os.PathLike, fields: Mapping[str, Any]) -> Tree:
    """{"params": ...} of a VQGAN with `fields` (VQGAN's constructor fields) from either checkpoint form.

    `.bin/.pth/.pt/.safetensors` are read as the PyTorch port, anything else as the
    JAX checkpoint (flax msgpack). Keys and shapes are validated by the caller
    against the model (the port's mapping validates its own keys here).
    """
    path = os.fspath(path)
    if is_torch_file(path):
        entries = vqgan_port_entries(
            fields["filters"],
            tuple(fields["channel_multipliers"]),
            fields["num_res_blocks"],
            fields["embedding_dim"],
            fields["codebook_size"],
        )
        state = tl.read_state_dict(path)
        return {"params": tl.state_dict_to_tree(state, entries, PORT_NAME)}
    with open(path, "rb") as f:
        try:
            variables = flax.serialization.msgpack_restore(f.read())
        except Exception as e:  # msgpack raises several types on junk input
            raise ValueError(
                f"Could not read {path!r} as a flax msgpack checkpoint ({type(e).__name__}: {e}); the MaskGIT VQGAN "
                "is read from the JAX checkpoint (msgpack) or the PyTorch port (.bin / .safetensors)."
            ) from e
    if not isinstance(variables, Mapping):
        raise ValueError(f"{path!r} holds a {type(variables).__name__}, not flax variables.")
    if "params" not in variables and "encoder" in variables:
        variables = {"params": variables}
    return dict(variables)


@dataclasses.dataclass(frozen=True)
class Options:
    checkpoint: str = cli.option(None, "maskgit-vqgan-imagenet-f16-256.bin (or .safetensors).", required=True)
    output: str = cli.option(None, "Output .msgpack file.", required=True)


def run(config: None, options: Options) -> dict[str, str]:
    """The PyTorch port of the MaskGIT VQGAN -> the JAX checkpoint layout (flax msgpack)."""
    del config
    from absl import app

    if not is_torch_file(options.checkpoint):
        raise app.UsageError("--checkpoint must be the PyTorch port (.bin/.pth/.pt/.safetensors).")
    # Sized off the file (the official one is the full MaskGIT VQGAN; smaller ports convert as they are).
    _, variables = load_vqgan_file(options.checkpoint)
    tree = {"params": tl.unflatten(tl.flatten(variables["params"]))}
    with atomic_write(options.output) as f:
        f.write(flax.serialization.msgpack_serialize(tree))
    return {"output": options.output}


if __name__ == "__main__":
    cli.main(run, Options)
