"""The MaskGIT recipe (config.recipe "maskgit"; "generator" is its deprecated name): class-conditional
masked-token modelling over a frozen tokenizer's codes (a TiTok's, or the MaskGIT-VQGAN's raster-order grid).

Runs on the shared driver loop and `train.step.train_step` (no GAN, no codebook
statistics). A step masks round(K * arccos(t) / (pi / 2)) tokens per example,
drops the class (-> null) with probability `class_dropout`, and trains on the
label-smoothed masked-token loss. Batches carry `tokens` (pretokenized shards) or
`image` (tokenized on the fly by the frozen tokenizer in `frozen["tokenizer"]`).
With config.prefix_lengths (over a variable-length tokenizer) each example is its first k tokens, k drawn
per example like the tokenizer's token_dropout: only those are masked, scored and attended to, and k is
data (one compiled step for every k), so `Generator.generate(num_tokens=k)` samples any prefix.
Evaluation samples a fixed class grid with the EMA params and decodes it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Hashable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from titok_jax import configs, optim, recipes
from titok_jax import sharding as sh
from titok_jax.data import pipeline
from titok_jax.data import tokens as token_data
from titok_jax.inference import generator as generator_lib
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.inference.tokenizer import Tokenizer, TokenizerModel
from titok_jax.models import resize
from titok_jax.models.maskgit import MaskGITBert, MaskGITUViT, maskgit_from_config, resolve_prefix_lengths
from titok_jax.models.titok import draw_num_kept, titok_from_config
from titok_jax.models.vqgan_tokenizer import vqgan_tokenizer
from titok_jax.recipes import generation_eval, init_from
from titok_jax.sampling import SamplingSettings
from titok_jax.train import masking
from titok_jax.train.loop import Plan
from titok_jax.train.state import TrainState

ARTIFACT = recipes.GENERATOR
# The file names a MaskGIT-VQGAN tokenizer comes as (the PyTorch port, its safetensors, the flax msgpack).
VQGAN_SUFFIXES = (".bin", ".pth", ".pt", ".safetensors", ".msgpack")

# The sample grid written every sample_every steps: up to this many classes x this many samples.
GRID_CLASSES = 8
GRID_SAMPLES_PER_CLASS = 8


@dataclasses.dataclass(frozen=True, eq=False)
class MaskGITRecipe:
    grid_name: ClassVar[str] = "samples"
    phases: ClassVar[tuple[Hashable, ...]] = (False,)
    model: MaskGITBert | MaskGITUViT
    tokenizer: TokenizerModel  # a TiTok or the MaskGIT-VQGAN
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    seed: int
    sampling: SamplingSettings
    grad_accum_steps: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = True
    class_dropout: float = 0.1
    label_smoothing: float = 0.1
    unmasked_weight: float = 0.1
    # "none" (every example all K tokens, the official recipe), "uniform" or "pow2": the prefix-length draw.
    prefix_lengths: str = "none"

    # ---- state -----------------------------------------------------------------
    def example_batch(self) -> dict[str, jax.Array]:
        return {"tokens": jnp.zeros((1, self.model.num_tokens), jnp.int32), "label": jnp.zeros((1,), jnp.int32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        params = self.model.init(rng, batch["tokens"], batch["label"])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
        )

    def phase(self, step: int) -> bool:
        return False

    def step_context(self, state: TrainState, frozen: dict[str, Any], phase: Hashable) -> dict[str, Any]:
        return frozen

    def before_apply(self, state: TrainState, params: Any, metrics: dict[str, jax.Array]) -> tuple[Any, Any, Any]:
        return state, params, metrics

    def extra_updates(self, state: TrainState, batch: dict[str, jax.Array], outputs: Any, phase: Hashable):
        return state, {}

    def window_summaries(self, sums: dict[str, Any], steps: int) -> tuple[dict[str, float], dict[str, Any]]:
        return {}, {}  # every metric of a generator step is a scalar

    def evaluation_images(self, scalars: dict[str, float]) -> dict[str, Any]:
        return {}  # the sample grid says it all

    # ---- training --------------------------------------------------------------
    def tokens_of(self, batch: dict[str, jax.Array], frozen: dict[str, Any]) -> jax.Array:
        """The batch's codes: pretokenized, or the frozen tokenizer's encoding of its images."""
        if "tokens" in batch:
            return batch["tokens"]
        return jax.lax.stop_gradient(tokenizer_lib.encode(self.tokenizer, frozen["tokenizer"], batch["image"]))

    def loss(
        self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, context: dict[str, Any]
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
        """Masked-token loss of one (micro-)batch -> (loss, (metrics, None)).

        With prefix training each example's length k comes from `batch["lengths"]` (B,) when the batch has it
        (a fixed k: tests, evaluation at one k), else from the recipe's draw; k is an array, never a shape."""
        tokens = self.tokens_of(batch, context)
        mask_key, drop_key, dropout_key = jax.random.split(rng, 3)
        lengths = batch.get("lengths")
        if lengths is None and self.prefix_lengths != "none":
            # fold_in, not a 4th split: the keys above stay those of the official recipe.
            lengths = draw_num_kept(
                jax.random.fold_in(rng, 3), tokens.shape[0], self.model.num_tokens, self.prefix_lengths
            )
        inputs, masked = masking.mask_tokens(mask_key, tokens, mask_id=self.model.codebook_size, lengths=lengths)
        dropped = jax.random.bernoulli(drop_key, self.class_dropout, batch["label"].shape)
        class_ids = jnp.where(dropped, self.model.num_classes, batch["label"])
        logits = self.model.apply(
            params, inputs, class_ids, deterministic=False, lengths=lengths, rngs={"dropout": dropout_key}
        )
        valid = None if lengths is None else masking.prefix_positions(lengths, self.model.num_tokens)
        loss, metrics = masking.masked_token_loss(
            logits, tokens, masked, self.label_smoothing, self.unmasked_weight, valid=valid
        )
        if valid is None:
            metrics["masked_fraction"] = jnp.mean(masked.astype(jnp.float32))
        else:  # of the prefix's tokens; and the mean k the step trained on
            metrics["masked_fraction"] = jnp.sum(masked) / jnp.sum(valid)
            metrics["mean_prefix_length"] = jnp.mean(lengths.astype(jnp.float32))
        return loss, (metrics, None)

    # ---- sampling --------------------------------------------------------------
    def sample(self, params: Any, class_ids: jax.Array, rng: jax.Array) -> jax.Array:
        """Token ids (B, K) for class_ids (B,) (traceable): the inference Generator's own sampler."""
        return generator_lib.sample_tokens(self.model, self.sampling, params, class_ids, rng)

    def decode(self, tokenizer_params: Any, ids: jax.Array) -> jax.Array:
        """Token ids -> images in [0, 1]."""
        return tokenizer_lib.decode(self.tokenizer, tokenizer_params, ids)

    def evaluate(
        self, state: TrainState, eval_batch: dict[str, jax.Array], frozen: dict[str, Any]
    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """EMA samples of the class grid in `eval_batch["label"]` -> ({}, rows (classes, per class, H, W, 3)).

        The sampling key is fixed, so successive grids differ only by what the model learned.
        """
        ids = self.sample(state.ema_params, eval_batch["label"], jax.random.PRNGKey(self.seed))
        images = self.decode(frozen["tokenizer"], ids)
        shown = GRID_CLASSES * GRID_SAMPLES_PER_CLASS
        rows = images[:shown].reshape(GRID_CLASSES, GRID_SAMPLES_PER_CLASS, *images.shape[1:])
        return {}, rows


def grid_class_ids(num_classes: int, num_devices: int) -> np.ndarray:
    """Class ids of the sample grid: GRID_CLASSES evenly spaced classes (repeating when fewer exist) x
    GRID_SAMPLES_PER_CLASS, padded with class 0 to a multiple of the device count (sharded batch)."""
    classes = np.linspace(0, num_classes - 1, GRID_CLASSES).round().astype(np.int32)
    ids = np.repeat(classes, GRID_SAMPLES_PER_CLASS)
    padded = -(-len(ids) // num_devices) * num_devices
    return np.concatenate([ids, np.zeros(padded - len(ids), np.int32)])


def tokenizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The frozen tokenizer's experiment config (config.tokenizer.config is a `file.py[:arg]` spec)."""
    return configs.load_config(config.tokenizer.config)


def _tokenizer_source(config: ml_collections.ConfigDict) -> tuple[str, Any]:
    """(tokenizer path, its experiment config; None when the path is an exported tokenizer; for a
    MaskGIT-VQGAN file the image size it tokenizes: the data's, as the VQGAN is fully convolutional)."""
    workdir = config.tokenizer.workdir
    if workdir and tokenizer_lib.is_vqgan_checkpoint(workdir):
        return workdir, tokenizer_lib.vqgan_overrides(config)
    if workdir and tokenizer_lib.is_exported_tokenizer(workdir):
        return workdir, None
    if not config.tokenizer.config:
        if workdir and workdir.lower().endswith(VQGAN_SUFFIXES) and not os.path.exists(workdir):
            raise ValueError(
                f"config.tokenizer.workdir={workdir!r} does not exist: download the MaskGIT-VQGAN "
                "(maskgit-vqgan-imagenet-f16-256.bin, HF fun-research/TiTok) and set --config.tokenizer.workdir to "
                "its path (or to its msgpack from python -m titok_jax.convert.vqgan)."
            )
        raise ValueError(
            "config.tokenizer.config must name the tokenizer's experiment config (file.py[:variant]), unless "
            "config.tokenizer.workdir is an exported tokenizer (titok_jax bundle, official hub directory, or the "
            "MaskGIT-VQGAN's .bin / msgpack)."
        )
    return workdir, tokenizer_config(config)


# ---- config -> recipe -------------------------------------------------------------------------------------
def validate(config: ml_collections.ConfigDict) -> None:
    """The generator's own checks: model and sampling fields, and that the tokenizer (and the token shards,
    when given) produce the codes this generator models. Reads no weights."""
    model = maskgit_from_config(config.model)
    SamplingSettings.from_config(config.sampling)
    tok = validate_against_tokenizer(config, model)
    source = config.tokenizer.config or config.tokenizer.workdir
    resolve_prefix_lengths(config.get("prefix_lengths", "none"), tok.token_dropout, f"tokenizer {source!r}")


def validate_against_tokenizer(config: ml_collections.ConfigDict, model: Any) -> TokenizerModel:
    """Checks shared by the token generators (MaskGIT, RAR): class dropout, in-training evaluation, and that the
    tokenizer (and the token shards, when given) produce the codes `model` models. Reads no weights; returns
    the tokenizer's model."""
    if not 0.0 <= config.losses.class_dropout < 1.0:
        raise ValueError(f"losses.class_dropout must be in [0, 1), got {config.losses.class_dropout}.")
    if "evaluation" in config:  # runs recorded before in-training gFID have none
        generation_eval.validate(config.evaluation)
    workdir, tok_config = _tokenizer_source(config)
    if isinstance(tok_config, ml_collections.ConfigDict):  # a training workdir's experiment config
        recipes.validate(tok_config)
    tok = tokenizer_lib.model_of(workdir, tok_config)
    # A VQGAN file is its own config (a leftover tokenizer.config spec is not what was read).
    vqgan = tokenizer_lib.is_vqgan_checkpoint(workdir)
    source = workdir if vqgan else config.tokenizer.config or config.tokenizer.workdir
    if tok.quantize_mode == "vae":
        raise ValueError(f"The generator models discrete codes; tokenizer {source!r} is a VAE.")
    for ours, theirs, what in (
        (model.codebook_size, tok.codebook_size, "codebook_size"),
        (model.num_tokens, tok.num_latent_tokens, "num_tokens (the tokenizer's num_latent_tokens)"),
    ):
        if ours != theirs:
            raise ValueError(
                f"Generator/tokenizer mismatch: config.model {what} = {ours} but the tokenizer "
                f"{source!r} has {theirs}. Set config.model to match the tokenizer."
            )
    if config.data.source == "synthetic" and config.data.num_classes > model.num_classes:
        raise ValueError(f"data.num_classes={config.data.num_classes} exceeds model.num_classes={model.num_classes}.")
    if config.tokens_dir:
        metadata = token_data.read_metadata(config.tokens_dir)
        for key, ours in (("codebook_size", model.codebook_size), ("num_tokens", model.num_tokens)):
            if metadata.get(key) != ours:
                raise ValueError(
                    f"The token shards in config.tokens_dir={config.tokens_dir!r} have {key}={metadata.get(key)} "
                    f"but the generator expects {ours}: they were written by another tokenizer. Pretokenize with "
                    "the generator's tokenizer, or point tokens_dir at its shards."
                )
    elif config.data.image_size != tok.image_size:
        raise ValueError(
            f"Tokenizing on the fly: data.image_size={config.data.image_size} differs from the tokenizer's "
            f"image_size={tok.image_size}."
        )
    return tok


def check_tokens_match(tokens_dir: str, identity: dict[str, Any]) -> dict[str, Any]:
    """Refuses token shards that another tokenizer (or another checkpoint of it) wrote; returns their metadata."""
    metadata = token_data.read_metadata(tokens_dir)
    token_data.shard_paths(tokens_dir, metadata)
    differing = [k for k in tokenizer_lib.IDENTITY_KEYS if metadata.get(k) != identity[k]]
    if differing:
        raise ValueError(
            f"The token shards in config.tokens_dir={tokens_dir!r} were written by another tokenizer "
            f"({metadata.get('tokenizer_workdir')!r} at step {metadata.get('checkpoint_step')}) than "
            f"config.tokenizer ({identity['tokenizer_workdir']!r} at step {identity['checkpoint_step']}); they "
            f"differ in {differing}. Pretokenize again with this tokenizer, or point config.tokenizer at the one "
            "that wrote them: samples would be decoded by the wrong codebook."
        )
    return metadata


def load_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The frozen tokenizer a generator config names (params-only from a workdir, or an exported one)."""
    workdir, tok_config = _tokenizer_source(config)
    if not workdir:
        raise ValueError(
            "The generator needs its tokenizer: set config.tokenizer.workdir to the tokenizer's training workdir "
            "(and config.tokenizer.config to its experiment config)."
        )
    tokenizer = Tokenizer.load(os.path.abspath(workdir), config=tok_config)
    if tokenizer.model.quantize_mode == "vae":
        raise ValueError(f"A token generator needs a tokenizer of discrete codes; {workdir!r} is a VAE.")
    return tokenizer


def build(config: ml_collections.ConfigDict, random_frozen: bool = False) -> tuple[MaskGITRecipe, dict[str, Any]]:
    """-> (recipe, {"tokenizer": frozen EMA params}). Loads and checks the tokenizer and shards: call before
    compiling. `random_frozen` draws the tokenizer's weights at random (benchmarks: only shapes matter)."""
    return build_with(config, functools.partial(_recipe, config, maskgit_from_config(config.model)), random_frozen)


def build_with(
    config: ml_collections.ConfigDict, make_recipe: Any, random_frozen: bool = False
) -> tuple[Any, dict[str, Any]]:
    """(make_recipe(tokenizer model), {"tokenizer": its params}) for any token generator recipe."""
    if random_frozen:
        tokenizer = _random_tokenizer_model(config)
        images = jnp.zeros((1, *tokenizer.image_shape), jnp.float32)
        import flax.linen as nn

        params = {"params": nn.meta.unbox(jax.jit(tokenizer.init)(jax.random.PRNGKey(0), images))["params"]}
        return make_recipe(tokenizer), {"tokenizer": params}
    tokenizer = load_tokenizer(config)
    if config.tokens_dir:
        check_tokens_match(config.tokens_dir, tokenizer.identity())
    return make_recipe(tokenizer.model), {"tokenizer": tokenizer.host_variables()}


def _random_tokenizer_model(config: ml_collections.ConfigDict) -> TokenizerModel:
    """The tokenizer model to draw random weights for: a MaskGIT-VQGAN named by path without an experiment
    config is sized off its file, or is the official one when the file is absent (only shapes matter)."""
    workdir = config.tokenizer.workdir
    if not config.tokenizer.config and workdir and workdir.lower().endswith(VQGAN_SUFFIXES):
        if tokenizer_lib.is_vqgan_checkpoint(workdir):
            return tokenizer_lib.model_of(workdir, tokenizer_lib.vqgan_overrides(config))
        return vqgan_tokenizer(tokenizer_lib.vqgan_overrides(config))
    return titok_from_config(tokenizer_config(config).model)


def recipe_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields every token generator recipe reads the same way: optimizer, schedule, seed, EMA, class dropout."""
    return dict(
        optimizer=optim.make_optimizer(config.optimizer, config.total_steps, frozen=recipes.frozen_params(config)),
        learning_rate=optim.learning_rate_schedule(config.optimizer, config.total_steps),
        seed=config.seed,
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.ema.decay,
        ema_warmup=config.ema.warmup,
        class_dropout=config.losses.class_dropout,
    )


def _recipe(config: ml_collections.ConfigDict, model: Any, tokenizer: TokenizerModel) -> MaskGITRecipe:
    return MaskGITRecipe(
        model=model,
        tokenizer=tokenizer,
        sampling=SamplingSettings.from_config(config.sampling),
        **recipe_fields(config),
        label_smoothing=config.losses.label_smoothing,
        unmasked_weight=config.losses.unmasked_weight,
        # Runs recorded before prefix training have no key: all K tokens.
        prefix_lengths=resolve_prefix_lengths(config.get("prefix_lengths", "none"), tokenizer.token_dropout),
    )


def make_data(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, np.ndarray]]:
    """-> (this process's train iterator of token rows or images, its part of the sample grid's class ids)."""
    if config.tokens_dir:
        train_iter = token_data.make_token_train_iterator(
            config.tokens_dir, config.batch_size, config.seed, config.model.num_classes, config.data
        )
    else:  # images, tokenized inside the step
        train_iter = pipeline.make_train_iterator(config.data, config.batch_size, seed=config.seed)
        # Token shards check each label as they are read; an image source says its class count up front.
        # A label >= model.num_classes would silently train the null class or index past the vocabulary.
        num_classes = train_iter.num_classes
        if num_classes is not None and num_classes > config.model.num_classes:
            raise ValueError(
                f"The data has {num_classes} classes (labels 0..{num_classes - 1}) but config.model.num_classes="
                f"{config.model.num_classes}: set config.model.num_classes to at least {num_classes}."
            )
    class_ids = grid_class_ids(config.model.num_classes, jax.device_count())
    return train_iter, {"label": sh.process_local(class_ids)}


def prepare(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str) -> Plan:
    """The loop's plan: recipe + frozen tokenizer, token (or image) data, the EMA sample grid, in-training gFID."""
    return plan_for(config, mesh, workdir, *build(config), resize_rules(config))


def plan_for(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    workdir: str,
    recipe: Any,
    frozen: dict[str, Any],
    rules: dict[str, init_from.Resize],
) -> Plan:
    """The plan of any token generator recipe once built: warm start, data, sample grid, in-training gFID."""
    warm_start = init_from.warm_start(
        config, workdir, init_from.abstract_params(recipe, config.seed), load_init_source, rules
    )
    train_iter, grid_batch = make_data(config)
    evaluators = []
    if config.get("evaluation") and config.evaluation.every:  # gFID / sFID / IS / precision / recall of samples
        evaluators.append(generation_eval.gfid_evaluator(config, recipe, frozen, mesh, workdir))
    return Plan(
        recipe=recipe, frozen=frozen, mesh=mesh, train_iter=train_iter, grid_batch=grid_batch,
        grid_every=config.sample_every, evaluators=evaluators, warm_start=warm_start,
    )  # fmt: skip


# ---- fine-tuning starts (recipes.init_from) ----------------------------------------------------------------
def resize_rules(config: ml_collections.ConfigDict) -> dict[str, init_from.Resize]:
    """class_table: another number of classes (the class rows of the word-embedding table cut, or grown
    with fresh rows; the codes, the mask and the null class kept)."""
    rows = functools.partial(resize.class_rows, codebook_size=config.model.codebook_size)
    return {"class_table": init_from.Resize(("word_embeddings/embedding", "embeddings/embedding"), rows)}


def load_init_source(path: str, source_config: str | None) -> init_from.Loaded:
    """A generator's params from a training workdir (its recorded config, or `source_config`), a generator
    bundle, or an official generator checkpoint (hub directory, or weights file + `source_config` yaml/json)."""
    path = init_from.resolve_source(path, ARTIFACT)
    loaded = generator_lib.load_model_and_variables(path, source_config)
    step = f" step {loaded.metadata['step']}" if "step" in loaded.metadata else ""
    return init_from.Loaded(init_from.flat_host_params(loaded.variables), f"{path!r}{step}")
