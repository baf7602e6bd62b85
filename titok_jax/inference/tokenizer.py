"""The inference API of a trained TiTok: images -> tokens -> images.

  tok = Tokenizer.load("exported_bundle/")          # or an official hub directory
  tok = Tokenizer.from_pretrained("yucornetto/tokenizer_titok_l32_imagenet")  # a released one, by hub name
  tok = Tokenizer.load("/tmp/titok_tiny", config="experiments/titok_single_stage.py:tiny_vq")  # a training workdir
  tokens = tok.encode(images)                        # uint8 or float [0, 1], (B, H, W, 3)
  tokens = tok.encode(tok.preprocess(photos))        # PIL images / arrays of any size: resize + center crop
  images = tok.decode(tokens)                        # float32 [0, 1], (B, H, W, 3)

`load` accepts a training workdir plus its experiment config (the newest checkpoint's EMA
params, read params-only), a titok_jax bundle (`python -m titok_jax.export`), an official hub
directory (config.json + model.safetensors / pytorch_model.bin), or a weights file plus its
config (`config=` a config.json or the official infer .yaml). It also takes the frozen MaskGIT-VQGAN
that the official RAR models (`maskgit-vqgan-imagenet-f16-256.bin`, or its flax msgpack from
`python -m titok_jax.convert.vqgan`): its tokens are the (S/16)^2 codes of an S px image in raster order
(256 at the official 256 px; `config={"image_size": S}` or an experiment config picks S), its sizes
read off the file.
Batches are padded to a multiple of the local devices and sharded over them; each
(model, batch shape) compiles once. VQ tokens are int32 code ids (B, K); VAE tokens are
the posterior means (B, K, token_size). `encode` below is the one jitted images -> tokens
path: pretokenization and the generators' on-the-fly tokenization use it too.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.convert import titok as convert_titok
from titok_jax.convert import torch_layout as tl
from titok_jax.convert import vqgan as convert_vqgan
from titok_jax.data import transforms
from titok_jax.inference import bundle as bundle_lib
from titok_jax.inference import hub, restore
from titok_jax.models import layer_stack
from titok_jax.models.titok import TiTok, titok_from_config
from titok_jax.models.vqgan_tokenizer import VQGANTokenizer, tokenizer_fields, vqgan_tokenizer
from titok_jax.trees import check_tree_matches

# A tokenizer bundle's model.architecture for a VQGAN (a TiTok's fields have no architecture key).
VQGAN_ARCHITECTURE = "maskgit_vqgan"
# What a Tokenizer wraps: a TiTok, or the MaskGIT-VQGAN with TiTok's tokenizer surface (models/vqgan_tokenizer.py).
TokenizerModel = TiTok | VQGANTokenizer

# What names a tokenizer; token shards record it and a generator checks it.
IDENTITY_KEYS = ("num_tokens", "codebook_size", "codebook_sha256")
# What `load` reads of a hub repo (all that `from_pretrained` downloads): a titok_jax bundle, or the official
# config + weights, the torch pickle only where the repo has no safetensors.
HUB_FILES = (bundle_lib.BUNDLE_FILE, bundle_lib.PARAMS_FILE, convert_titok.CONFIG_NAME, convert_titok.SAFETENSORS_NAME)
HUB_FALLBACKS = {convert_titok.SAFETENSORS_NAME: convert_titok.TORCH_NAME}


# Methods by name, not TiTok.encode: a VQGANTokenizer has the same two (raster-order codes for the VQGAN).
@functools.partial(jax.jit, static_argnames="model")
def encode(model: TokenizerModel, variables: Any, images: jax.Array) -> jax.Array:
    """images (B, H, W, 3) in [0, 1] -> int32 code ids (B, K) (VQ, FSQ, LFQ, BSQ) or posterior means (B, K, C)
    (VAE)."""
    latents, info = model.apply(variables, images, sample_posterior=False, method="encode")
    return latents if model.quantize_mode == "vae" else info["indices"].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="model")
def decode(model: TokenizerModel, variables: Any, tokens: jax.Array) -> jax.Array:
    """Tokens from `encode` -> pixels (B, H, W, 3) clipped to [0, 1]."""
    return jnp.clip(model.apply(variables, tokens, method="decode_tokens"), 0.0, 1.0)


def is_training_workdir(path: str | os.PathLike) -> bool:
    return os.path.isdir(os.path.join(os.fspath(path), "checkpoints"))


def is_vqgan_checkpoint(path: str | os.PathLike) -> bool:
    """A MaskGIT-VQGAN file: the official PyTorch port (.bin / .safetensors) or a flax msgpack."""
    return bool(path) and convert_vqgan.is_vqgan_checkpoint(path)


def is_exported_tokenizer(path: str | os.PathLike) -> bool:
    """A titok_jax bundle, an official hub directory or a MaskGIT-VQGAN file (not a training workdir): it
    carries its own model, so no experiment config is needed."""
    if is_vqgan_checkpoint(path):
        return True
    return os.path.isdir(path) and (bundle_lib.is_bundle(path) or convert_titok.is_hub_directory(path))


def vqgan_overrides(config: Any) -> dict[str, Any]:
    """The VQGANTokenizer fields `config` sets beside those its file implies: None (the official 256 px), a
    mapping of fields ({"image_size": S}, or sizes to check the file against), or an experiment config
    (its data.image_size: a fully convolutional VQGAN tokenizes the images the data holds)."""
    if config is None or config == "":
        return {}
    if isinstance(config, ml_collections.ConfigDict) and "data" in config:
        return {"image_size": int(config.data.image_size)}
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)
    raise ValueError(
        f"A MaskGIT-VQGAN file takes config= None, a dict of its fields (e.g. {{'image_size': 256}}) or an "
        f"experiment config; got {config!r}."
    )


def vqgan_model(fields: dict[str, Any], config: Any, path: str) -> VQGANTokenizer:
    """The VQGANTokenizer of a file's `fields` with `config`'s overrides; a size that contradicts the file is
    refused (image_size is the one field a file does not record)."""
    overrides = vqgan_overrides(config)
    contradicting = {
        name: (value, fields[name])
        for name, value in overrides.items()
        if name in fields and tuple(np.atleast_1d(value)) != tuple(np.atleast_1d(fields[name]))
    }
    if contradicting:
        described = ", ".join(
            f"{name}={ours!r} (the file: {theirs!r})" for name, (ours, theirs) in contradicting.items()
        )
        raise ValueError(
            f"config for the MaskGIT-VQGAN {path!r} says {described}; drop those fields, which the file fixes."
        )
    return vqgan_tokenizer({**fields, **overrides})


def exported_model(path: str | os.PathLike, config: Any = None) -> TokenizerModel:
    """The model of a bundle, hub directory or VQGAN file, from its config or shapes alone (no weights read;
    `config`: a VQGAN's overrides, see vqgan_overrides)."""
    path = os.fspath(path)
    if is_vqgan_checkpoint(path):
        return vqgan_model(convert_vqgan.read_fields(path), config, path)
    if bundle_lib.is_bundle(path):
        return model_from_fields(bundle_lib.read_header(path, kind="tokenizer")["model"])
    config_path = os.path.join(path, convert_titok.CONFIG_NAME)
    return titok_from_config(
        convert_titok.fields_from_hub_config(convert_titok.read_hub_config(config_path), config_path)
    )


def experiment_config(config: ml_collections.ConfigDict | str) -> ml_collections.ConfigDict:
    """An experiment config given as a ConfigDict or a `file.py[:arg]` spec."""
    return configs.load_config(config) if isinstance(config, str) else config


def model_of(path: str | os.PathLike, config: ml_collections.ConfigDict | str | None = None) -> TokenizerModel:
    """The tokenizer model of any source without reading weights: an exported one from its own config (a
    VQGAN file from its shapes, at `config`'s image size), a training workdir (or a path still to be trained)
    from `config`'s model."""
    if is_exported_tokenizer(path):
        return exported_model(path, config if is_vqgan_checkpoint(path) else None)
    if config is None:
        raise ValueError(
            f"{os.fspath(path)!r} is not an exported tokenizer (titok_jax bundle or official hub directory); "
            "name its experiment config (file.py[:variant]) to read it as a training workdir."
        )
    return titok_from_config(experiment_config(config).model)


def workdir_config(workdir: str, config: ml_collections.ConfigDict | str | None = None) -> ml_collections.ConfigDict:
    """The experiment config of a training workdir: `config` when given, else the one its run recorded."""
    if config is not None:
        return experiment_config(config)
    recorded = configs.read_run_config(workdir)
    if recorded is None:
        raise ValueError(
            f"{workdir!r} is a training workdir without {configs.RUN_CONFIG}; pass its experiment config "
            "(file.py[:variant]), or export it first (python -m titok_jax.export)."
        )
    return recorded


def restore_workdir(
    workdir: str, config: ml_collections.ConfigDict | str, mesh: jax.sharding.Mesh | None = None, ema: bool = True
) -> tuple[TiTok, restore.Restored]:
    """(model in the config's layout, its params-only restore) of a tokenizer training workdir, on `mesh`
    (default: config.mesh over every device)."""
    config = experiment_config(config)
    model = titok_from_config(config.model)
    mesh = mesh or sh.make_mesh(**config.mesh)
    images = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
    restored = restore.restore_params(
        workdir, model, (images,), mesh, ema=ema, hint="train the tokenizer first (python -m titok_jax.main)."
    )
    return model, restored


def load_model_and_variables(
    path: str | os.PathLike, config: Any = None
) -> tuple[TokenizerModel, dict[str, Any], dict[str, Any]]:
    """(model, {"params": host arrays}, metadata) of a bundle, a hub directory, a MaskGIT-VQGAN file (+ its
    overrides, see vqgan_overrides), or a weights file + `config`."""
    path = os.fspath(path)
    if not _names_weights_config(config) and is_vqgan_checkpoint(path):
        fields, variables = convert_vqgan.load_vqgan_file(path)
        model = vqgan_model(fields, config, path)
        check_tree_matches(variables["params"], expected_params(model), f"MaskGIT-VQGAN {path!r}")
        return model, {"params": variables["params"]}, {"source": path, "variant": "maskgit_vqgan"}
    if os.path.isdir(path) and bundle_lib.is_bundle(path):
        loaded = bundle_lib.load_bundle(path, kind="tokenizer")
        model = model_from_fields(loaded.model)
        check_tree_matches(loaded.variables["params"], expected_params(model), f"Bundle {path!r}")
        return model, loaded.variables, loaded.metadata
    if os.path.isdir(path) and convert_titok.is_hub_directory(path) and not _names_weights_config(config):
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
    if is_training_workdir(path) or (os.path.isdir(path) and _names_experiment_config(config)):
        experiment = workdir_config(path, config)
        model, restored = restore_workdir(path, experiment)
        variables = {"params": layer_stack.unstack_blocks(sh.to_host(restored.variables["params"]))}
        metadata = {"source": path, "step": restored.step, "variant": experiment.get("variant", "")}
        return model.clone(scan_layers=False), variables, metadata
    if not os.path.exists(path):
        raise FileNotFoundError(f"No tokenizer at {path!r}: it does not exist.")
    raise ValueError(
        f"{path!r} is neither a titok_jax bundle (titok_jax_bundle.json) nor an official tokenizer directory "
        "(config.json + model.safetensors). Export a training workdir with `python -m titok_jax.export "
        "--config=... --workdir=... --output=DIR` first."
    )


def model_from_fields(fields: Any) -> TokenizerModel:
    """The model of a bundle header's fields: a VQGAN's carry architecture "maskgit_vqgan", a TiTok's none."""
    if fields.get("architecture") == VQGAN_ARCHITECTURE:
        return vqgan_tokenizer({name: value for name, value in fields.items() if name != "architecture"})
    return titok_from_config(fields)


def model_fields(model: TokenizerModel) -> dict[str, Any]:
    """What `model_from_fields` rebuilds `model` from (a bundle's header)."""
    if isinstance(model, VQGANTokenizer):
        return {"architecture": VQGAN_ARCHITECTURE, **tokenizer_fields(model)}
    return convert_titok.model_fields(model)


def expected_params(model: TokenizerModel) -> Any:
    """The abstract params (shapes) of `model`, to check a loaded tree against."""
    if isinstance(model, TiTok):
        return convert_titok.expected_params(model)
    images = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images))["params"]


def _names_weights_config(config: Any) -> bool:
    """Whether `config` is a weights file's config (config.json / official .yaml), not an experiment config."""
    return isinstance(config, str | os.PathLike) and os.fspath(config).endswith((".json", ".yaml", ".yml"))


def _names_experiment_config(config: Any) -> bool:
    return isinstance(config, ml_collections.ConfigDict) or (isinstance(config, str) and ".py" in config)


class Tokenizer:
    """A frozen TiTok (or MaskGIT-VQGAN) with its weights, replicated over this process's devices (a
    data-parallel mesh)."""

    def __init__(
        self, model: TokenizerModel, variables: Any, source: str = "", metadata: dict[str, Any] | None = None
    ) -> None:
        self.model = model
        self.source = source
        self.metadata = dict(metadata or {})
        self.mesh = sh.make_mesh(devices=jax.local_devices())
        self.variables = jax.device_put(jax.tree.map(jnp.asarray, variables), sh.replicated(self.mesh))

    # ---- loading ------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, config: Any = None) -> Tokenizer:
        """From a training workdir + its experiment config (ConfigDict or `file.py[:arg]`), a bundle directory,
        an official hub directory, a weights file + `config` (config.json / official infer .yaml), or a
        MaskGIT-VQGAN file (.bin port or flax msgpack; `config` None for 256 px, {"image_size": S}, or an
        experiment config whose data.image_size it reads)."""
        model, variables, metadata = load_model_and_variables(path, config)
        return cls(model, variables, source=os.fspath(path), metadata=metadata)

    @classmethod
    def from_pretrained(
        cls, repo_id: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
    ) -> Tokenizer:
        """A released tokenizer by hub name ("yucornetto/tokenizer_titok_l32_imagenet", or a pushed titok_jax
        bundle), downloaded into the hub cache or read from it offline (HF_HUB_OFFLINE=1); a local path is
        read as `load` reads it."""
        directory = hub.resolve(repo_id, HUB_FILES, HUB_FALLBACKS, revision, cache_dir)
        tokenizer = cls.load(directory)
        if directory != os.fspath(repo_id):
            tokenizer.metadata["hub_repo"] = os.fspath(repo_id)  # provenance a bundle exported from it keeps
        return tokenizer

    def identity(self) -> dict[str, Any]:
        """What names this tokenizer in token shards: source, checkpoint step, variant, sizes, codebook hash."""
        identity = {
            "tokenizer_workdir": os.path.abspath(self.source) if self.source else "",
            "checkpoint_step": int(self.metadata.get("step", 0)),
            "variant": self.metadata.get("variant", ""),
            "num_tokens": int(self.model.num_latent_tokens),
            "codebook_size": int(self.model.codebook_size),
        }
        if self.model.quantize_mode == "vq":
            # TiTok's VQ codebook lives at quantize/codebook, the VQGAN's at quantizer/codebook.
            quantizer = "quantizer" if isinstance(self.model, VQGANTokenizer) else "quantize"
            codebook = np.asarray(jax.device_get(self.variables["params"][quantizer]["codebook"]), np.float32)
            identity["codebook_sha256"] = hashlib.sha256(codebook.tobytes()).hexdigest()
        elif self.model.quantize_mode != "vae":  # lookup-free: the quantizer's fields are its codebook
            described = f"{self.model.quantize_mode}:{tuple(self.model.fsq_levels)}:{self.model.token_size}"
            identity["codebook_sha256"] = hashlib.sha256(described.encode()).hexdigest()
        return identity

    def host_variables(self) -> Any:
        return sh.to_host(self.variables)

    def __repr__(self) -> str:
        model = self.model
        mode = model.quantize_mode
        if mode == "vae":
            quantizer = f"VAE latents of {model.token_size} channels (continuous, no codebook)"
        elif mode == "vq":
            quantizer = f"VQ codebook of {model.codebook_size} codes x {model.token_size} dims"
        elif mode == "fsq":
            levels = ",".join(map(str, model.fsq_levels))
            quantizer = f"FSQ levels {levels} ({model.codebook_size} codes)"
        else:  # lfq / bsq: one bit per channel
            quantizer = f"{mode.upper()} {model.token_size} bits ({model.codebook_size} codes)"
        step = f", checkpoint step {self.metadata['step']}" if self.metadata.get("step") is not None else ""
        stage = "" if model.decodes_to_pixels else ", stage 1: decodes to proxy codes, not pixels"
        if isinstance(model, VQGANTokenizer):
            stage = f", MaskGIT-VQGAN: a {model.grid_size}x{model.grid_size} grid in raster order"
        return (
            f"Tokenizer({self.source!r}{step}: {self.image_size}x{self.image_size} px -> {self.num_tokens} tokens, "
            f"{quantizer}{stage})"
        )

    # ---- properties -----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def num_tokens(self) -> int:
        return self.model.num_latent_tokens

    @property
    def codebook_size(self) -> int | None:
        return None if self.model.quantize_mode == "vae" else self.model.codebook_size

    # ---- encode / decode ------------------------------------------------------------
    def _sharded(self, batch: np.ndarray) -> tuple[jax.Array, int]:
        """Pads the batch to a multiple of the local devices and shards it; returns (array, real size)."""
        if batch.shape[0] == 0:
            raise ValueError("Got an empty batch.")
        batch, size = sh.pad_batch(batch, self.mesh.devices.size, fill="repeat")
        return jax.device_put(batch, sh.batch_sharding(self.mesh, batch.ndim)), size

    def _images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 3)
        # Before the size check: a (B, H, W) batch would otherwise be read as one (H, W, C) image and get a
        # message about its size, when what it lacks is the channel axis.
        if images.ndim in (3, 4) and images.shape[-1] == 4:
            raise ValueError(
                f"Tokenizer.encode got {images.shape}: 4 channels (RGBA?); it expects RGB. Drop the alpha channel "
                "(images[..., :3]), or pass PIL images through tokenizer.preprocess(images), which composites "
                "alpha on white as training does."
            )
        if (images.ndim == 3 and images.shape[-1] != 3) or (images.ndim == 4 and images.shape[-1] == 1):
            raise ValueError(
                f"Tokenizer.encode got {images.shape}: grayscale images without 3 channels; it expects RGB "
                f"(batch, {', '.join(map(str, expected))}). Stack them to 3 channels "
                "(np.repeat(images[..., None], 3, axis=-1), or [..., 0] first for (B, H, W, 1)), or pass them "
                "through tokenizer.preprocess(images), which also resizes."
            )
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != expected:
            hint = " (channels-first? transpose to NHWC)" if images.ndim == 4 and images.shape[1] == 3 else ""
            raise ValueError(
                f"Tokenizer.encode expects images of shape (batch, {', '.join(map(str, expected))}); got "
                f"{images.shape}{hint}. Resize / center-crop to {self.image_size} px first: "
                "tokenizer.preprocess(images) does the evaluation resize + center crop."
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

    def preprocess(self, images: Any) -> np.ndarray:
        """The evaluation preprocessing (shorter side to image_size, bicubic; center crop) of images of any size:
        a list of PIL images or (H, W, 3) / (H, W) arrays (uint8, or float in [0, 1]), or one such image or
        array batch -> float32 (B, S, S, 3) in [0, 1], ready for `encode`."""
        return np.stack([self._preprocessed(image, i) for i, image in enumerate(_image_list(images))])

    def _preprocessed(self, image: Any, index: int) -> np.ndarray:
        if isinstance(image, Image.Image):
            image = transforms.to_rgb_uint8(image)  # every PIL mode as training decodes it (alpha on white)
        image = np.asarray(image)
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"Tokenizer.preprocess: image {index} has shape {image.shape}; expected (H, W, 3) RGB or (H, W) "
                "grayscale (RGBA? pass a PIL image, which is composited on white, or drop the alpha channel)."
            )
        if image.dtype == np.uint8:
            return transforms.to_unit_float(transforms.resize_center_crop(image, self.image_size))
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(
                f"Tokenizer.preprocess: image {index} is {image.dtype}; pass uint8 (0..255) or floats in [0, 1]."
            )
        low, high = float(image.min()), float(image.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"Tokenizer.preprocess: image {index} is float in [{low:.3g}, {high:.3g}], not [0, 1]; divide "
                "0..255 floats by 255 (and map [-1, 1] data with (x + 1) / 2)."
            )
        # Bicubic overshoots near edges; clipping keeps the result in encode's [0, 1].
        return np.clip(transforms.resize_center_crop(image.astype(np.float32), self.image_size), 0.0, 1.0)

    def encode(self, images: Any) -> np.ndarray:
        """(B, H, W, 3) uint8 or float [0, 1] images -> int32 tokens (B, K) (VQ) or latents (B, K, C) (VAE)."""
        batch, size = self._sharded(self._images(images))
        return np.asarray(encode(self.model, self.variables, batch))[:size]

    def decode(self, tokens: Any) -> np.ndarray:
        """Tokens from `encode` -> float32 images (B, H, W, 3) clipped to [0, 1]."""
        if not self.model.decodes_to_pixels:
            raise ValueError(
                "This tokenizer is a stage-1 two-stage model: its decoder predicts MaskGIT-VQGAN proxy codes, not "
                "pixels. Decode with the stage-2 weights (trained with the pixel decoder; finetune_decoder=true)."
            )
        tokens = np.asarray(tokens)
        if self.model.quantize_mode != "vae" and tokens.ndim == 3 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]  # the official (B, 1, K) layout
        if isinstance(self.model, VQGANTokenizer) and tokens.ndim == 3:
            tokens = tokens.reshape(tokens.shape[0], -1)  # the VQGAN's own (B, h, w) grid, read row by row
        length = tokens.shape[1] if tokens.ndim >= 2 else 0
        if 1 <= length < self.num_tokens and self.model.token_dropout == "none":
            raise ValueError(
                f"This tokenizer was trained without token dropout: decode takes all {self.num_tokens} tokens, got "
                f"{length}. Only a variable-length tokenizer (model.token_dropout uniform / pow2) decodes a prefix."
            )
        prefix_ok = self.model.token_dropout != "none" and 1 <= length <= self.num_tokens
        if self.model.quantize_mode != "vae":
            if (
                tokens.ndim != 2
                or not (prefix_ok or length == self.num_tokens)
                or not np.issubdtype(tokens.dtype, np.integer)
            ):
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
            expected = (length if prefix_ok else self.num_tokens, self.model.token_size)
            if tokens.ndim != 3 or tokens.shape[1:] != expected:
                raise ValueError(f"Expected VAE latents (batch, {expected[0]}, {expected[1]}); got {tokens.shape}.")
            tokens = tokens.astype(np.float32)
        batch, size = self._sharded(tokens)
        return np.asarray(decode(self.model, self.variables, batch))[:size]

    def reconstruct(self, images: Any) -> np.ndarray:
        return self.decode(self.encode(images))


def _image_list(images: Any) -> list[Any]:
    """`preprocess`'s input as a list of single images: a PIL image or (H, W[, 1 | 3]) array is one image, a
    (B, H, W, C) or (B, H, W) array a batch (3-D arrays whose last axis is not 1 or 3 hold grayscale images)."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3)):
            return [images]
        if images.ndim in (3, 4):
            return list(images)
        raise ValueError(f"Tokenizer.preprocess got an array of shape {images.shape}; expected images (B, H, W, 3).")
    images = list(images)
    if not images:
        raise ValueError("Tokenizer.preprocess got no images.")
    return images


def unscanned_params(tokenizer: Tokenizer) -> Any:
    """The params on the host in the interchange layout: exports never hold stacked (scanned) ViT blocks."""
    return layer_stack.unstack_blocks(tokenizer.host_variables()["params"])


def save_bundle(
    tokenizer: Tokenizer,
    output: str,
    dtype: str = "float32",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """A titok_jax tokenizer bundle (fields + weights in the unscanned interchange layout)."""
    variables = {"params": unscanned_params(tokenizer)}
    model = tokenizer.model if isinstance(tokenizer.model, VQGANTokenizer) else tokenizer.model.clone(scan_layers=False)
    return bundle_lib.save_bundle(
        output, "tokenizer", model_fields(model), variables, params_dtype=dtype,
        metadata={**tokenizer.metadata, **(metadata or {})}, overwrite=overwrite,
    )  # fmt: skip
