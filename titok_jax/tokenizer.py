"""The inference API of a trained TiTok: images -> tokens -> images.

  tok = Tokenizer.load("exported_bundle/")          # or an official hub directory
  tokens = tok.encode(images)                        # uint8 or float [0, 1], (B, H, W, 3)
  images = tok.decode(tokens)                        # float32 [0, 1], (B, H, W, 3)

`load` accepts a titok_jax bundle (`python -m titok_jax.export`), an official hub
directory (config.json + model.safetensors / pytorch_model.bin), or a weights file
plus its config (`config=` a config.json or the official infer .yaml).
Batches are padded to a multiple of the local devices and sharded over them; each
(model, batch shape) compiles once. VQ tokens are int32 code ids (B, K); VAE tokens are
the posterior means (B, K, token_size).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from titok_jax import bundle as bundle_lib
from titok_jax.convert import titok as convert_titok
from titok_jax.convert import torch_layout as tl
from titok_jax.models.titok import TiTok, titok_from_config


@functools.partial(jax.jit, static_argnames="model")
def _encode(model: TiTok, variables: Any, images: jax.Array) -> jax.Array:
    latents, info = model.apply(variables, images, sample_posterior=False, method=TiTok.encode)
    return info["indices"].astype(jnp.int32) if model.quantize_mode == "vq" else latents


@functools.partial(jax.jit, static_argnames="model")
def _decode(model: TiTok, variables: Any, tokens: jax.Array) -> jax.Array:
    return jnp.clip(model.apply(variables, tokens, method=TiTok.decode_tokens), 0.0, 1.0)


def is_exported_tokenizer(path: str | os.PathLike) -> bool:
    """A titok_jax bundle or an official hub directory (not a training workdir)."""
    return os.path.isdir(path) and (bundle_lib.is_bundle(path) or convert_titok.is_hub_directory(path))


def exported_model(path: str | os.PathLike) -> TiTok:
    """The model of a bundle or hub directory, from its config alone (no weights read)."""
    path = os.fspath(path)
    if bundle_lib.is_bundle(path):
        return titok_from_config(bundle_lib.read_header(path)["model"])
    config_path = os.path.join(path, convert_titok.CONFIG_NAME)
    return titok_from_config(
        convert_titok.fields_from_hub_config(convert_titok.read_hub_config(config_path), config_path)
    )


def load_model_and_variables(
    path: str | os.PathLike, config: str | os.PathLike | None = None
) -> tuple[TiTok, dict[str, Any], dict[str, Any]]:
    """(model, {"params": host arrays}, metadata) of a bundle, a hub directory, or a weights file + `config`."""
    path = os.fspath(path)
    if os.path.isdir(path) and bundle_lib.is_bundle(path):
        loaded = bundle_lib.load_bundle(path, kind="tokenizer")
        model = titok_from_config(loaded.model)
        from titok_jax.tree_checks import check_tree_matches

        check_tree_matches(loaded.variables["params"], convert_titok.expected_params(model), f"Bundle {path!r}")
        return model, loaded.variables, loaded.metadata
    if os.path.isdir(path) and convert_titok.is_hub_directory(path) and config is None:
        model, variables = convert_titok.load_hub_tokenizer(path)
        return model, variables, {"source": path}
    if os.path.isfile(path):
        if config is None:
            raise ValueError(
                f"{path!r} is a weights file; pass config= its config.json (or the official "
                "configs/infer/TiTok/*.yaml) so the model can be built."
            )
        config = os.fspath(config)
        model = titok_from_config(convert_titok.fields_from_hub_config(convert_titok.read_config_file(config), config))
        variables = convert_titok.params_from_state_dict(model, tl.read_state_dict(path), repr(path))
        return model, variables, {"source": path}
    if not os.path.exists(path):
        raise FileNotFoundError(f"No tokenizer at {path!r}.")
    raise ValueError(
        f"{path!r} is neither a titok_jax bundle (titok_jax_bundle.json) nor an official tokenizer directory "
        "(config.json + model.safetensors). Export a training workdir with `python -m titok_jax.export "
        "--config=... --workdir=... --output=DIR` first."
    )


class Tokenizer:
    """A frozen TiTok with its weights, replicated over the local devices."""

    def __init__(self, model: TiTok, variables: Any, source: str = "") -> None:
        self.model = model
        self.source = source
        self.mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("batch",))
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.variables = jax.device_put(jax.tree.map(jnp.asarray, variables), replicated)
        self._batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("batch"))

    # ---- loading ------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Tokenizer:
        """From a bundle directory, an official hub directory, or a weights file + `config`."""
        model, variables, _ = load_model_and_variables(path, config)
        return cls(model, variables, source=os.fspath(path))

    # ---- properties -----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def num_tokens(self) -> int:
        return self.model.num_latent_tokens

    @property
    def codebook_size(self) -> int | None:
        return self.model.codebook_size if self.model.quantize_mode == "vq" else None

    # ---- encode / decode ------------------------------------------------------------
    def _sharded(self, batch: np.ndarray) -> tuple[jax.Array, int]:
        """Pads the batch to a multiple of the local devices and shards it; returns (array, real size)."""
        size = batch.shape[0]
        if size == 0:
            raise ValueError("Got an empty batch.")
        devices = self.mesh.devices.size
        padded = -(-size // devices) * devices
        if padded != size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - size, axis=0)])
        return jax.device_put(batch, self._batch_sharding), size

    def _images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != expected:
            hint = " (channels-first? transpose to NHWC)" if images.ndim == 4 and images.shape[1] == 3 else ""
            raise ValueError(
                f"Tokenizer.encode expects images of shape (batch, {', '.join(map(str, expected))}); got "
                f"{images.shape}{hint}. Resize / center-crop to {self.image_size} px first."
            )
        if images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"Images must be uint8 (0..255) or floats in [0, 1]; got dtype {images.dtype}.")
        low, high = float(images.min()), float(images.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"Float images must lie in [0, 1]; these span [{low:.3g}, {high:.3g}]. Pass uint8 pixels, or "
                "divide 0..255 floats by 255 (and map [-1, 1] data with (x + 1) / 2)."
            )
        return images.astype(np.float32)

    def encode(self, images: Any) -> np.ndarray:
        """(B, H, W, 3) uint8 or float [0, 1] images -> int32 tokens (B, K) (VQ) or latents (B, K, C) (VAE)."""
        batch, size = self._sharded(self._images(images))
        return np.asarray(_encode(self.model, self.variables, batch))[:size]

    def decode(self, tokens: Any) -> np.ndarray:
        """Tokens from `encode` -> float32 images (B, H, W, 3) clipped to [0, 1]."""
        if not self.model.decodes_to_pixels:
            raise ValueError(
                "This tokenizer is a stage-1 two-stage model: its decoder predicts MaskGIT-VQGAN proxy codes, not "
                "pixels. Decode with the stage-2 weights (trained with the pixel decoder; finetune_decoder=true)."
            )
        tokens = np.asarray(tokens)
        if self.model.quantize_mode == "vq":
            if tokens.ndim == 3 and tokens.shape[1] == 1:
                tokens = tokens[:, 0]  # the official (B, 1, K) layout
            if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens or not np.issubdtype(tokens.dtype, np.integer):
                raise ValueError(
                    f"Expected integer tokens (batch, {self.num_tokens}); got {tokens.dtype} {tokens.shape}."
                )
            if tokens.size and (tokens.min() < 0 or tokens.max() >= self.model.codebook_size):
                raise ValueError(
                    f"Token ids must lie in [0, {self.model.codebook_size}); got [{tokens.min()}, {tokens.max()}] "
                    "(tokens of another tokenizer?)."
                )
            tokens = tokens.astype(np.int32)
        else:
            expected = (self.num_tokens, self.model.token_size)
            if tokens.ndim != 3 or tokens.shape[1:] != expected:
                raise ValueError(f"Expected VAE latents (batch, {expected[0]}, {expected[1]}); got {tokens.shape}.")
            tokens = tokens.astype(np.float32)
        batch, size = self._sharded(tokens)
        return np.asarray(_decode(self.model, self.variables, batch))[:size]

    def reconstruct(self, images: Any) -> np.ndarray:
        return self.decode(self.encode(images))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] images -> uint8, rounded (the evaluation protocol's /255 rounding)."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
