"""The inference API of a trained MaskGIT generator: class ids -> tokens -> images.

  gen = Generator.load("/tmp/titok_tiny_generator", config="experiments/maskgit_generator.py:tiny")
  gen = Generator.load("exported_generator/")                      # a generator bundle (its tokenizer inside)
  gen = Generator.load("generator_titok_l32_imagenet/", tokenizer="tokenizer_titok_l32_imagenet/")  # official
  gen = Generator.from_pretrained("org/generator", tokenizer="org/tokenizer")  # by hub name (a bundle: no tokenizer=)
  images, tokens = gen.generate(class_ids, seed=0)                  # uint8 (N, H, W, 3), int32 (N, K)

`load` accepts a training workdir plus its experiment config (EMA params, read params-only; the
tokenizer named by config.tokenizer), a titok_jax generator bundle (`python -m titok_jax.export` of a
generator workdir: `tokenizer/` inside holds its tokenizer bundle), or an official generator hub
directory / weights file + config (then `tokenizer=` names the tokenizer). `sample_tokens` is the one
sampling path: the training loop's sample grid uses it too, so the same params, classes and key give
the same tokens everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from titok_jax import logs
from titok_jax import sharding as sh
from titok_jax.ar_sampling import ARSamplingSettings, sample_cached, sample_uncached
from titok_jax.convert import generator as convert_generator
from titok_jax.inference import bundle as bundle_lib
from titok_jax.inference import hub, restore
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.inference.tokenizer import Tokenizer, TokenizerModel
from titok_jax.models.generators import GeneratorModel, generator_fields, generator_from_config, is_autoregressive
from titok_jax.models.rar import RAR
from titok_jax.models.vqgan_tokenizer import VQGANTokenizer
from titok_jax.sampling import SamplingSettings
from titok_jax.trees import check_tree_matches

TOKENIZER_DIR = "tokenizer"  # a generator bundle's own tokenizer bundle
# The metadata key (a bundle's too) saying what prefix lengths a MaskGIT generator trained on (config.prefix_lengths).
PREFIX_LENGTHS_KEY = "prefix_lengths"
Settings = SamplingSettings | ARSamplingSettings
# What `load` reads of a hub repo (all that `from_pretrained` downloads): a generator bundle with its
# tokenizer's bundle inside, or the official config + weights (the same names as a tokenizer's).
HUB_FILES = (
    *tokenizer_lib.HUB_FILES,
    f"{TOKENIZER_DIR}/{bundle_lib.BUNDLE_FILE}",
    f"{TOKENIZER_DIR}/{bundle_lib.PARAMS_FILE}",
)


def settings_of(model: GeneratorModel, config: Any) -> Settings:
    """The sampler settings of `model`'s family from a mapping (config.sampling, a bundle's, an official's)."""
    if is_autoregressive(model):
        return ARSamplingSettings.from_config(config)
    return SamplingSettings.from_config(config)


def sample_tokens(
    model: GeneratorModel,
    settings: Settings,
    variables: Any,
    class_ids: jax.Array,
    rng: jax.Array,
    num_tokens: int | None = None,
) -> jax.Array:
    """Token ids (B, K) for class_ids (B,) (traceable): MaskGIT parallel decoding, or RAR's one token a step
    (with its K/V cache unless settings.kv_cache is off). `num_tokens` = k < K gives (B, k): RAR stops after k
    tokens; MaskGIT decodes only the first k positions, the rest hidden from attention (meaningful for a
    generator trained on prefixes: `Generator` checks that)."""
    prefix = num_tokens is not None and num_tokens != model.num_tokens
    if prefix and not 1 <= num_tokens <= model.num_tokens:
        raise ValueError(f"num_tokens must be in [1, {model.num_tokens}], got {num_tokens}.")

    def logits_fn(ids, classes):
        if prefix and not is_autoregressive(model):
            # ids.shape[0], not class_ids': guided steps run a doubled batch.
            return model.apply(variables, ids, classes, lengths=jnp.full(ids.shape[:1], num_tokens, jnp.int32))
        return model.apply(variables, ids, classes)

    if is_autoregressive(model):
        sizes = {"num_tokens": model.num_tokens, "null_class": model.num_classes, "stop_after": num_tokens}
        if not settings.kv_cache:
            return sample_uncached(settings, logits_fn, class_ids, rng, **sizes)
        rows = class_ids.shape[0] * (2 if settings.guided else 1)

        def prefill_fn(classes, cache):
            return model.apply(variables, classes, cache, method=RAR.prefill)

        def step_fn(token, step, classes, cache):
            return model.apply(variables, token, step, classes, cache, method=RAR.decode_step)

        return sample_cached(settings, prefill_fn, step_fn, model.init_cache(rows), class_ids, rng, **sizes)
    return settings.sample(
        logits_fn,
        class_ids,
        rng,
        num_tokens=model.num_tokens,
        codebook_size=model.codebook_size,
        null_class=model.num_classes,
        prefix_length=num_tokens if prefix else None,
    )


@functools.partial(jax.jit, static_argnames=("model", "settings", "tokenizer", "num_tokens"))
def generate_batch(
    model: GeneratorModel,
    settings: Settings,
    tokenizer: TokenizerModel,
    variables: Any,
    tokenizer_variables: Any,
    class_ids: jax.Array,
    rng: jax.Array,
    num_tokens: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """class_ids (B,) -> (uint8 images (B, H, W, 3), token ids (B, K or num_tokens)) in one program."""
    ids = sample_tokens(model, settings, variables, class_ids, rng, num_tokens)
    images = tokenizer_lib.decode(tokenizer, tokenizer_variables, ids)
    return jnp.round(images * 255).astype(jnp.uint8), ids


def balanced_class_ids(num_images: int, num_classes: int) -> np.ndarray:
    """Image i gets class i * num_classes // num_images: equal counts when num_classes divides num_images."""
    return (np.arange(num_images, dtype=np.int64) * num_classes // num_images).astype(np.int32)


def abstract_variables(model: GeneratorModel) -> Any:
    """The boxed abstract variables of a generator (logical axes included; nothing initialised)."""
    ids = jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(lambda i, c: model.init(jax.random.PRNGKey(0), i, c), ids, labels)


@dataclasses.dataclass(frozen=True)
class LoadedGenerator:
    """A generator's model and weights as read from one source, with the sampler settings and the tokenizer
    the source names (None where it names none)."""

    model: GeneratorModel
    variables: Any  # {"params": ...}: host arrays, or on `mesh` for a training workdir read `on_mesh`
    metadata: dict[str, Any]
    sampling: Any  # sampler settings: a mapping or a config
    tokenizer: Any = None  # what `_tokenizer` turns into a Tokenizer
    mesh: jax.sharding.Mesh | None = None


@dataclasses.dataclass(frozen=True)
class WorkdirTokenizer:
    """The tokenizer a generator's training config names (read only when asked for)."""

    path: str
    config: Any


def load_model_and_variables(
    path: str | os.PathLike, config: ml_collections.ConfigDict | str | None = None, on_mesh: bool = False
) -> LoadedGenerator:
    """A generator's model and weights from a training workdir (+ its experiment config, or the one its run
    recorded), a generator bundle, or an official hub directory / weights file (+ `config` yaml/json). Reads
    no tokenizer weights. A workdir's params stay on its config's mesh with `on_mesh`, else come to the host."""
    path = os.fspath(path)
    names_weights_config = isinstance(config, (str, os.PathLike)) and os.fspath(config).endswith(
        (".json", ".yaml", ".yml")
    )
    if isinstance(config, ml_collections.ConfigDict) or (
        tokenizer_lib.is_training_workdir(path) and not names_weights_config
    ):
        config = tokenizer_lib.workdir_config(path, config)
        model = generator_from_config(config.model)
        mesh = sh.make_mesh(**config.mesh)
        ids = jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32)
        labels = jax.ShapeDtypeStruct((1,), jnp.int32)
        restored = restore.restore_params(
            path, model, (ids, labels), mesh, hint="it is not a generator workdir (train one with titok_jax.main)."
        )
        metadata = {"source": path, "step": restored.step, "variant": config.get("variant", "")}
        if not is_autoregressive(model):  # what prefixes it trained on (runs recorded before: none)
            metadata[PREFIX_LENGTHS_KEY] = config.get("prefix_lengths", "none")
        tokenizer = WorkdirTokenizer(config.tokenizer.workdir, _tokenizer_config(config))
        if on_mesh:
            return LoadedGenerator(model, restored.variables, metadata, config.sampling, tokenizer, mesh)
        return LoadedGenerator(model, sh.to_host(restored.variables), metadata, config.sampling, tokenizer)
    if bundle_lib.is_bundle(path):
        loaded = bundle_lib.load_bundle(path, kind="generator")
        model = generator_from_config(loaded.model)
        check_tree_matches(loaded.variables["params"], nn.meta.unbox(abstract_variables(model))["params"], path)
        own = os.path.join(path, TOKENIZER_DIR)
        sampling = loaded.metadata.get("sampling", {})
        return LoadedGenerator(
            model, loaded.variables, loaded.metadata, sampling, own if bundle_lib.is_bundle(own) else None
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"No generator at {path!r}.")
    model, variables, fields, sampling = convert_generator.load_official_generator(
        path, config if isinstance(config, (str, os.PathLike)) else None
    )
    return LoadedGenerator(model, variables, {"source": path, "fields": fields, "sampling": sampling}, sampling)


class Generator:
    """A frozen class-conditional generator, its sampler settings and its tokenizer (for pixels)."""

    def __init__(
        self,
        model: GeneratorModel,
        variables: Any,
        tokenizer: Tokenizer,
        settings: Settings,
        source: str = "",
        metadata: dict[str, Any] | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> None:
        if tokenizer.model.quantize_mode == "vae" or tokenizer.model.codebook_size != model.codebook_size:
            raise ValueError(
                f"Generator {source!r} models {model.codebook_size} codes x {model.num_tokens} tokens, but tokenizer "
                f"{tokenizer.source!r} has {tokenizer.codebook_size} codes: pass the tokenizer it was trained on."
            )
        if tokenizer.num_tokens != model.num_tokens:
            # A VQGAN's token count is its grid's: the image size picks it, which its file does not record.
            hint = (
                " (a MaskGIT-VQGAN makes (S/16)^2 tokens at S px: load it with config={'image_size': S})"
                if isinstance(tokenizer.model, VQGANTokenizer)
                else ""
            )
            raise ValueError(
                f"Generator {source!r} models {model.num_tokens} tokens, tokenizer {tokenizer.source!r} makes "
                f"{tokenizer.num_tokens}: pass the tokenizer it was trained on{hint}."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.source = source
        self.metadata = dict(metadata or {})
        if not is_autoregressive(model):
            # "auto" means the tokenizer's token_dropout; a bundle then records the distribution itself.
            option = self.metadata.get(PREFIX_LENGTHS_KEY, "none")  # official checkpoints: all K
            if option == "auto":
                option = tokenizer.model.token_dropout
            self.metadata[PREFIX_LENGTHS_KEY] = option
        self.mesh = mesh or sh.make_mesh()
        shardings = sh.logical_shardings(abstract_variables(model), self.mesh)
        self.variables = jax.device_put(variables, shardings)
        self._tokenizer_variables = jax.device_put(tokenizer.host_variables(), sh.replicated(self.mesh))

    # ---- loading ------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        config: ml_collections.ConfigDict | str | None = None,
        tokenizer: Tokenizer | str | None = None,
        settings: Settings | None = None,
    ) -> Generator:
        """From a training workdir + its experiment config, a generator bundle, or an official generator
        hub directory (or weights file + `config` yaml/json) with `tokenizer`. `tokenizer` (a Tokenizer or any
        path Tokenizer.load takes) replaces the one the source names; `settings` replaces its sampler's."""
        path = os.fspath(path)
        names_own_tokenizer = (
            tokenizer_lib.is_training_workdir(path)
            or isinstance(config, ml_collections.ConfigDict)
            or bundle_lib.is_bundle(path)
        )
        if tokenizer is None and not names_own_tokenizer and os.path.exists(path):
            raise ValueError(
                f"{path!r} is an official generator checkpoint; pass tokenizer= the tokenizer it models (an "
                "official hub directory, a bundle, or a training workdir)."
            )
        source = load_model_and_variables(path, config, on_mesh=True)
        tokenizer = tokenizer if tokenizer is not None else source.tokenizer
        if tokenizer is None:
            raise ValueError(
                f"Generator bundle {path!r} holds no tokenizer ({TOKENIZER_DIR}/); pass tokenizer= the one it models."
            )
        return cls(
            source.model, source.variables, _tokenizer(tokenizer),
            settings or settings_of(source.model, source.sampling), source=path, metadata=source.metadata,
            mesh=source.mesh,
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str | os.PathLike,
        tokenizer: Tokenizer | str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        settings: Settings | None = None,
    ) -> Generator:
        """A released generator by hub name, downloaded into the hub cache or read from it offline
        (HF_HUB_OFFLINE=1): an official generator repo with `tokenizer` (a Tokenizer, a hub repo id or a local
        path), or a pushed generator bundle (its tokenizer inside). A local path is read as `load` reads it."""
        directory = hub.resolve(repo_id, HUB_FILES, tokenizer_lib.HUB_FALLBACKS, revision, cache_dir)
        if tokenizer is None and not (bundle_lib.is_bundle(directory) or tokenizer_lib.is_training_workdir(directory)):
            raise ValueError(
                f"{os.fspath(repo_id)!r} is an official generator; pass tokenizer= the tokenizer it models (a hub "
                "repo id such as yucornetto/tokenizer_titok_l32_imagenet, or a local directory)."
            )
        if isinstance(tokenizer, str | os.PathLike):
            tokenizer = Tokenizer.from_pretrained(tokenizer, cache_dir=cache_dir)
        generator = cls.load(directory, tokenizer=tokenizer, settings=settings)
        if directory != os.fspath(repo_id):
            generator.metadata["hub_repo"] = os.fspath(repo_id)
        return generator

    # ---- properties -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def __repr__(self) -> str:
        return (
            f"Generator({self.source!r}: {type(self.model).__name__}, {self.num_classes} classes, "
            f"{self.model.num_tokens} tokens over {self.model.codebook_size} codes, {self._sampler})"
        )

    @property
    def _sampler(self) -> str:
        if is_autoregressive(self.model):
            return f"autoregressive, guidance {self.settings.guidance_scale}"
        return f"{self.settings.num_steps} steps"

    @property
    def prefix_lengths(self) -> str:
        """What prefix lengths a MaskGIT generator trained on ("none": all K only); RAR: "any" (it stops early)."""
        return "any" if is_autoregressive(self.model) else self.metadata[PREFIX_LENGTHS_KEY]

    def _check_num_tokens(self, num_tokens: int | None) -> int | None:
        if num_tokens is None or num_tokens == self.model.num_tokens:
            return None
        if not 1 <= num_tokens <= self.model.num_tokens:
            raise ValueError(f"num_tokens must be in [1, {self.model.num_tokens}], got {num_tokens}.")
        if self.tokenizer.model.token_dropout == "none":
            raise ValueError(
                f"num_tokens={num_tokens} < {self.model.num_tokens}: tokenizer {self.tokenizer.source!r} was trained "
                "without token dropout and decodes only all its tokens; use a variable-length tokenizer "
                "(model.token_dropout uniform / pow2)."
            )
        if self.prefix_lengths == "none":
            raise ValueError(
                f"num_tokens={num_tokens} < {self.model.num_tokens}: MaskGIT generator {self.source!r} was trained on "
                f"all {self.model.num_tokens} tokens only (prefix_lengths='none'); train it on prefixes "
                "(--config.prefix_lengths=pow2 or uniform, over a variable-length tokenizer), or sample all tokens."
            )
        return num_tokens

    # ---- sampling -------------------------------------------------------------------
    def generate(
        self,
        class_ids: Any,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        num_tokens: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """class ids (N,) -> (uint8 images (N, H, W, 3), int32 tokens (N, K)). Batch i of `batch_size` (rounded
        up to whole shards) uses the key fold_in(PRNGKey(seed), i): the same seed gives the same images.
        `progress` shows a progress bar over the batches. `num_tokens` = k < K (over a variable-length tokenizer:
        an autoregressive generator, or a MaskGIT one trained with prefix_lengths) samples the first k tokens and
        decodes that prefix."""
        num_tokens = self._check_num_tokens(num_tokens)
        class_ids = np.asarray(class_ids, np.int32).reshape(-1)
        if class_ids.size == 0:
            raise ValueError("Got no class ids.")
        if class_ids.min() < 0 or class_ids.max() >= self.num_classes:
            raise ValueError(
                f"Class ids must lie in [0, {self.num_classes}); got [{class_ids.min()}, {class_ids.max()}]."
            )
        batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
        key = jax.random.PRNGKey(seed)
        sharding = sh.batch_sharding(self.mesh, 1)
        images, tokens = [], []
        with jax.set_mesh(self.mesh):
            starts = range(0, len(class_ids), batch_size)
            for index, start in enumerate(logs.bar(starts, "sample", unit="batch", enabled=progress)):
                ids = class_ids[start : start + batch_size]
                padded, size = sh.pad_batch(ids, batch_size)
                global_ids = jax.make_array_from_process_local_data(sharding, sh.process_local(padded))
                outputs = generate_batch(
                    self.model, self.settings, self.tokenizer.model, self.variables, self._tokenizer_variables,
                    global_ids, jax.random.fold_in(key, index), num_tokens,
                )  # fmt: skip
                batch_images, batch_tokens = (
                    np.asarray(x)[:size] for x in multihost_utils.process_allgather(outputs, tiled=True)
                )
                images.append(batch_images)
                tokens.append(batch_tokens.astype(np.int32))
        return np.concatenate(images), np.concatenate(tokens)

    def save_bundle(self, output: str, dtype: str = "float32", overwrite: bool = False) -> str:
        """A generator bundle (fields, EMA weights, sampler settings) with its tokenizer's bundle inside."""
        bundle_lib.check_output(output, overwrite)
        # The tokenizer first: the generator's header, written last, marks a complete bundle.
        tokenizer_lib.save_bundle(self.tokenizer, os.path.join(output, TOKENIZER_DIR), dtype=dtype, overwrite=True)
        metadata = {**self.metadata, "sampling": dataclasses.asdict(self.settings)}
        bundle_lib.save_bundle(
            output, "generator", generator_fields(self.model), sh.to_host(self.variables), params_dtype=dtype,
            metadata=metadata, overwrite=True,
        )  # fmt: skip
        return output


def _tokenizer(tokenizer: Tokenizer | WorkdirTokenizer | str) -> Tokenizer:
    if isinstance(tokenizer, WorkdirTokenizer):
        return Tokenizer.load(tokenizer.path, config=tokenizer.config)
    return tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)


def _tokenizer_config(config: ml_collections.ConfigDict) -> Any:
    """A generator config's tokenizer.config, unless tokenizer.workdir is exported (it carries its own); a
    MaskGIT-VQGAN file tokenizes images of the data's size (it is fully convolutional)."""
    workdir = config.tokenizer.workdir
    if tokenizer_lib.is_vqgan_checkpoint(workdir):
        return tokenizer_lib.vqgan_overrides(config)
    return None if tokenizer_lib.is_exported_tokenizer(workdir) else config.tokenizer.config
