r"""CPU side by side: titok_jax against the official bytedance/1d-tokenizer code itself (PyTorch, eager).

  python benchmarks/side_by_side.py --official=/path/to/1d-tokenizer [--cases=tiny,s128_stage1] \
      [--batch=B] [--steps=3] [--warmup=1] [--threads=2] [--sample_decode] [--out=FILE.json]

`--official` is a checkout of https://github.com/bytedance/1d-tokenizer (only modeling/ and configs/ are read; it is
put on sys.path at run time, nothing of it lives in this repository). Its modules need, beyond torch: omegaconf,
einops, huggingface_hub, accelerate (modeling/quantizer imports it) and transformers (modeling/maskgit.py: BertModel).

Each case builds the same model and step on both sides, with random weights, fp32, the same batch, and times
`--steps` steps after `--warmup` untimed ones (medians of per-step wall times):

  tiny          the tiny single-stage VQ tokenizer (experiments/titok_single_stage.py:tiny_vq: 32 px, 4 px patches,
                16 tokens, 256 x 8 l2 codes), but with ViT-small encoder and decoder on both sides: the official
                TiTokEncoder / TiTokDecoder only build the "small" / "base" / "large" widths (hard-coded tables), so
                the tiny 64-wide, 2-deep ViT cannot be built there. L2 + quantizer loss.
  s128_stage1   TiTok-S-128 stage 1 at 256 px (experiments/titok_two_stage.py:s128,stage=1; official
                configs/training/TiTok/stage1/titok_s128.yaml): the frozen MaskGIT-VQGAN teacher (official
                titok.PretrainedTokenizer, no_grad, eval) gives the proxy codes; cross-entropy over them + quantizer
                loss (official losses.ReconstructionLoss_Stage1).
  bl64_vq       TiTok-BL-64 single-stage VQ (experiments/titok_single_stage.py:bl64_vq; official
                configs/infer/TiTok/titok_bl64_vq8k.yaml): L2 + quantizer loss; perceptual loss and GAN off on both
                sides (the official perceptual loss downloads pretrained LPIPS / ConvNeXt weights).
  l32_generator the MaskGIT ViT generator (177M) over TiTok-L-32 tokens (experiments/maskgit_generator.py:l32; official
                maskgit.ImageBert from configs/infer/TiTok/titok_l32.yaml): the official masking
                (ImageBert.masking_input_tokens), class dropout 0.1, label-smoothed cross-entropy (losses.MLMLoss).
  l32_sample    L-32 sampling with that generator: ImageBert.generate with the official L-32 settings (8 steps,
                guidance 4.5 linear, temperature 9.5), generator tokens only; --sample_decode adds the TiTok-L-32
                decoder (tokens -> pixels) on both sides.

A train step is, on both sides: forward, loss, backward, gradient clipping (1.0), AdamW, EMA update (official:
modules.EMAModel.step; ours: the driver's jitted step, `titok_jax.train.step`, exactly as `python -m
titok_jax.benchmark --mode=train` compiles it). The official side reads every logged loss back to the host each step
(`.item()`, as its trainer does through accelerator.gather) and leaves out the lr scheduler and data loading. Clustering
VQ is off on both sides in `tiny` and `bl64_vq`: the official TiTok class never passes `clustering_vq` to its
quantizer (only TA-TiTok does); `--clustering_vq` turns it on on both sides (official: its VectorQuantizer with
clustering_vq=True swapped into the TiTok, as TATiTok builds it).

The final table gives seconds per image (train: of one optimizer step; sample: of generating), images per second and
official / ours (> 1: titok_jax is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import torch
import torch.nn.functional as F

from titok_jax import configs, recipes
from titok_jax import sharding as sh
from titok_jax.inference import generator as generator_lib
from titok_jax.models import titok as titok_model
from titok_jax.tasks import benchmark
from titok_jax.train.state import create_train_state
from titok_jax.train.step import make_step_fns

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
# The published MaskGIT-VQGAN (the stage-1 teacher), as modeling/titok.py PretrainedTokenizer hard-codes it.
OFFICIAL_VQGAN = {
    "channel_mult": [1, 1, 2, 2, 4],
    "num_resolutions": 5,
    "dropout": 0.0,
    "hidden_channels": 128,
    "num_channels": 3,
    "num_res_blocks": 2,
    "resolution": 256,
    "z_channels": 256,
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "tokenizer" | "generator" | "sample"
    spec: str  # our experiment config, relative to experiments/
    overrides: dict[str, Any]  # dotted config keys -> values, applied to ours
    batch: int  # default batch
    official_yaml: str | None = None  # the official config the official model is built from (None: from ours)
    teacher: bool = False  # stage 1: the frozen VQGAN teacher gives proxy codes


VIT_SMALL = {
    f"model.{p}_{k}": v
    for p in ("encoder", "decoder")
    for k, v in zip(("width", "depth", "num_heads"), (512, 8, 8), strict=True)
}
CASES = {
    case.name: case
    for case in (
        Case("tiny", "tokenizer", "titok_single_stage.py:tiny_vq", {**VIT_SMALL, "model.clustering_vq": False}, 32),
        Case(
            "s128_stage1",
            "tokenizer",
            "titok_two_stage.py:s128,stage=1",
            {},
            8,
            official_yaml="configs/training/TiTok/stage1/titok_s128.yaml",
            teacher=True,
        ),
        Case(
            "bl64_vq",
            "tokenizer",
            "titok_single_stage.py:bl64_vq",
            {"discriminator.enabled": False, "losses.perceptual_weight": 0.0, "model.clustering_vq": False},
            4,
            official_yaml="configs/infer/TiTok/titok_bl64_vq8k.yaml",
        ),
        Case(
            "l32_generator",
            "generator",
            "maskgit_generator.py:l32",
            {"model.dtype": "float32"},
            16,
            official_yaml="configs/infer/TiTok/titok_l32.yaml",
        ),
        Case(
            "l32_sample",
            "sample",
            "maskgit_generator.py:l32",
            {"model.dtype": "float32"},
            8,
            official_yaml="configs/infer/TiTok/titok_l32.yaml",
        ),
    )
}


# ---------------------------------------------------------------------------------------------------- ours


def our_config(case: Case, batch: int, clustering_vq: bool) -> ml_collections.ConfigDict:
    config = configs.load_config(str(EXPERIMENTS / case.spec))
    overrides = dict(case.overrides)
    if clustering_vq and "model.clustering_vq" in overrides:
        overrides["model.clustering_vq"] = True
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config.batch_size = batch
    config = config.copy_and_resolve_references()
    recipes.validate(config)
    return config


def _per_call_seconds(call: Callable[[Any], Any], carry: Any, steps: int, warmup: int) -> list[float]:
    """Wall seconds of each of `steps` calls of `carry = call(carry)` after `warmup`, each synced (the harness's
    `time_calls` over one call)."""
    if warmup:
        _, carry = benchmark.time_calls(call, carry, warmup, 0)
    times = []
    for _ in range(steps):
        seconds, carry = benchmark.time_calls(call, carry, 1, 0)
        times.append(seconds)
    return times


def ours_train(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict[str, Any]:
    """The driver's jitted train step (as `titok_jax.tasks.benchmark.benchmark_train` compiles it), timed per step."""
    recipe, frozen = recipes.lookup(config).build(config, random_frozen=True)
    mesh = sh.make_mesh(**config.mesh)
    frozen = jax.device_put(frozen, sh.replicated(mesh))
    _, init, shardings = create_train_state(recipe, config, mesh)
    gan_active = recipe.phase(config.total_steps - 1)
    step_fn = make_step_fns(recipe, shardings)[gan_active]
    with jax.set_mesh(mesh):
        state = init()
        batch = benchmark._synthetic_batch(recipe, config.batch_size, mesh)
        start = time.perf_counter()
        compiled = step_fn.lower(state, batch, frozen).compile()
        compile_s = time.perf_counter() - start
        times = _per_call_seconds(lambda s: compiled(s, batch, frozen)[0], state, steps, warmup)
    return {"step_times_s": times, "compile_s": compile_s, "gan_active": bool(gan_active)}


def ours_sample(config: ml_collections.ConfigDict, steps: int, warmup: int, decode: bool) -> dict[str, Any]:
    """MaskGIT sampling with the EMA params (as `benchmark_sample`), tokens only unless `decode`."""
    recipe, frozen = recipes.lookup(config).build(config, random_frozen=True)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        state = init()
        class_ids = jax.make_array_from_process_local_data(
            sh.batch_sharding(mesh, 1), (np.arange(config.batch_size) % 1000).astype(np.int32)
        )
        key = jax.random.PRNGKey(0)
        if decode:
            tokenizer_params = jax.device_put(frozen["tokenizer"], sh.replicated(mesh))
            sample = functools.partial(generator_lib.generate_batch, recipe.model, recipe.sampling, recipe.tokenizer)
            args = (state.ema_params, tokenizer_params, class_ids, key)
        else:
            sample = functools.partial(generator_lib.sample_tokens, recipe.model, recipe.sampling)
            args = (state.ema_params, class_ids, key)
        start = time.perf_counter()
        compiled = jax.jit(sample).lower(*args).compile()
        compile_s = time.perf_counter() - start
        times = _per_call_seconds(lambda _: compiled(*args), None, steps, warmup)
    return {"step_times_s": times, "compile_s": compile_s}


# ---------------------------------------------------------------------------------------------------- official


def official_commit(path: pathlib.Path, given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree: pass --official_commit)"


def import_official(path: pathlib.Path) -> None:
    if not (path / "modeling" / "titok.py").is_file():
        raise SystemExit(f"--official={path} is not a bytedance/1d-tokenizer checkout (no modeling/titok.py).")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    # Import every official module before jax compiles anything: importing them later (torchvision -> torch._dynamo
    # -> triton's native library) crashed the process with a segfault on this machine.
    import modeling.maskgit
    import modeling.modules
    import modeling.quantizer
    import modeling.titok  # noqa: F401


def _vit_size(width: int, depth: int, heads: int, where: str) -> str:
    for name, size in titok_model.VIT_SIZES.items():
        if size == (width, depth, heads):
            return name
    raise ValueError(
        f"The official TiTok{where} only builds the ViT sizes {dict(titok_model.VIT_SIZES)} (width, depth, heads); "
        f"ours is ({width}, {depth}, {heads})."
    )


def official_tokenizer_fields(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The official `model.vq_model` fields of our TiTok config (raises where the official code cannot build it)."""
    model = titok_model.titok_from_config(model_config)  # the module's fields, defaults filled in
    return {
        "codebook_size": model.codebook_size,
        "token_size": model.token_size,
        "use_l2_norm": model.use_l2_norm,
        "commitment_cost": model.commitment_cost,
        "vit_enc_model_size": _vit_size(model.encoder_width, model.encoder_depth, model.encoder_num_heads, "Encoder"),
        "vit_dec_model_size": _vit_size(model.decoder_width, model.decoder_depth, model.decoder_num_heads, "Decoder"),
        "vit_enc_patch_size": model.encoder_patch_size,
        "vit_dec_patch_size": model.decoder_patch_size,
        "num_latent_tokens": model.num_latent_tokens,
        "finetune_decoder": bool(model.with_pixel_decoder),
        "is_legacy": bool(model.legacy_two_stage),
    }


def official_generator_fields(model: ml_collections.ConfigDict) -> dict[str, Any]:
    return {
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.num_heads,
        "intermediate_size": model.intermediate_size,
        "dropout": model.dropout,
        "attn_drop": model.attention_dropout,
        "image_seq_len": model.num_tokens,
        "condition_num_classes": model.num_classes,
    }


def _check(section: str, ours: dict[str, Any], official: Any, notes: list[str]) -> None:
    """Notes every field where the official config differs from the one derived from ours."""
    for key, value in ours.items():
        theirs = official.get(key, "<absent>") if hasattr(official, "get") else "<absent>"
        if key == "is_legacy" and theirs == "<absent>":
            theirs = True  # TiTokEncoder / TiTokDecoder: config.get("is_legacy", True)
        if theirs != value:
            notes.append(f"{section}.{key}: ours {value!r}, official config {theirs!r}")


def official_config(case: Case, config: ml_collections.ConfigDict, root: pathlib.Path, notes: list[str]) -> Any:
    """The official OmegaConf config: the official yaml when there is one (checked against ours), else ours."""
    from omegaconf import OmegaConf

    if case.kind == "tokenizer":
        derived = {"model": {"vq_model": official_tokenizer_fields(config.model)}}
        derived["dataset"] = {"preprocessing": {"crop_size": config.model.image_size}}
    else:
        tokenizer = configs.load_config(config.tokenizer.config).model
        derived = {"model": {"vq_model": official_tokenizer_fields(tokenizer)}}
        derived["model"]["vq_model"]["codebook_size"] = config.model.codebook_size
        derived["model"]["generator"] = official_generator_fields(config.model)
        derived["dataset"] = {"preprocessing": {"crop_size": tokenizer.image_size}}
    if case.official_yaml is None:
        official = OmegaConf.create(derived)
    else:
        official = OmegaConf.load(root / case.official_yaml)
        for section in ("vq_model", "generator"):
            if section in derived["model"]:
                _check(f"model.{section}", derived["model"][section], official.model[section], notes)
        crop = official.dataset.preprocessing.crop_size
        if crop != derived["dataset"]["preprocessing"]["crop_size"]:
            notes.append(f"crop_size: ours {derived['dataset']['preprocessing']['crop_size']}, official {crop}")
    if case.kind == "tokenizer" and not case.teacher:
        official.model.vq_model.finetune_decoder = False  # single stage: the decoder predicts pixels
    if case.kind == "generator":
        official.losses = OmegaConf.create(
            {
                "label_smoothing": config.losses.label_smoothing,
                "loss_weight_unmasked_token": config.losses.unmasked_weight,
            }
        )
    if case.teacher:
        official.losses.quantizer_weight = config.losses.quantizer_weight
    return official


def official_adamw(model: torch.nn.Module, optimizer: ml_collections.ConfigDict) -> torch.optim.Optimizer:
    """AdamW with the official parameter groups (utils/train_utils.py create_optimizer): no weight decay for vectors
    and for norms, biases, embeddings, latent / mask tokens (by parameter name)."""
    no_decay_words = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or any(w in name for w in no_decay_words) else decay).append(param)
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": optimizer.weight_decay}],
        lr=optimizer.learning_rate,
        betas=(optimizer.b1, optimizer.b2),
        eps=optimizer.eps,
    )


def official_teacher() -> torch.nn.Module:
    """The official PretrainedTokenizer (MaskGIT-VQGAN encoder + quantizer, eval, frozen) with random weights: it
    only loads from a file, so a randomly initialised state dict of its modules is written to a temporary one."""
    from modeling import titok as official_titok
    from modeling.modules import maskgit_vqgan
    from omegaconf import OmegaConf

    conf = OmegaConf.create(OFFICIAL_VQGAN)
    holder = torch.nn.Module()
    holder.encoder = maskgit_vqgan.Encoder(conf)
    holder.decoder = maskgit_vqgan.Decoder(conf)
    holder.quantize = maskgit_vqgan.VectorQuantizer(num_embeddings=1024, embedding_dim=256, commitment_cost=0.25)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random_maskgit_vqgan.bin")
        torch.save(holder.state_dict(), path)
        return official_titok.PretrainedTokenizer(path)


def _item_all(logs: dict[str, torch.Tensor]) -> None:
    for value in logs.values():
        value.mean().item()  # the official trainer: accelerator.gather(v).mean().item() for every logged loss


def official_tokenizer_step(case: Case, config: ml_collections.ConfigDict, official: Any, clustering_vq: bool):
    from modeling.modules import EMAModel, ReconstructionLoss_Stage1
    from modeling.quantizer import VectorQuantizer
    from modeling.titok import TiTok

    model = TiTok(official).train()
    if clustering_vq and not case.teacher:
        vq = official.model.vq_model
        model.quantize = VectorQuantizer(
            codebook_size=vq.codebook_size,
            token_size=vq.token_size,
            commitment_cost=vq.commitment_cost,
            use_l2_norm=vq.use_l2_norm,
            clustering_vq=True,
        ).train()
    ema = EMAModel(model.parameters(), decay=config.ema.decay, model_cls=TiTok, config=official)
    optimizer = official_adamw(model, config.optimizer)
    teacher = official_teacher() if case.teacher else None
    loss_module = ReconstructionLoss_Stage1(official) if case.teacher else None
    size = official.dataset.preprocessing.crop_size
    images = torch.rand(config.batch_size, 3, size, size)
    weights = config.losses
    clip = config.optimizer.grad_clip_norm

    def step() -> None:
        if teacher is not None:
            teacher.eval()
            proxy_codes = teacher.encode(images)  # @torch.no_grad
            decoded, info = model(images)
            loss, logs = loss_module(proxy_codes, decoded, info)
        else:
            decoded, info = model(images)
            reconstruction = F.mse_loss(images, decoded) * weights.reconstruction_weight
            quantizer = weights.quantizer_weight * info["quantizer_loss"]
            loss = reconstruction + quantizer
            logs = {"total_loss": loss.detach(), "reconstruction_loss": reconstruction.detach()}
            logs.update({k: info[k].detach() for k in ("quantizer_loss", "commitment_loss", "codebook_loss")})
        _item_all(logs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def official_generator_step(config: ml_collections.ConfigDict, official: Any):
    from modeling.maskgit import ImageBert
    from modeling.modules import EMAModel, MLMLoss

    model = ImageBert(official).train()
    ema = EMAModel(model.parameters(), decay=config.ema.decay, model_cls=ImageBert, config=official)
    optimizer = official_adamw(model, config.optimizer)
    loss_module = MLMLoss(official)
    generator = official.model.generator
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        0, official.model.vq_model.codebook_size, (config.batch_size, generator.image_seq_len), generator=gen
    )
    labels = torch.randint(0, generator.condition_num_classes, (config.batch_size,), generator=gen)
    class_dropout = config.losses.class_dropout

    def step() -> None:
        masked_tokens, masks = model.masking_input_tokens(tokens)
        logits = model(masked_tokens, labels, cond_drop_prob=class_dropout)
        loss, logs = loss_module(logits, tokens, weights=masks)
        _item_all(logs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def official_sample_step(config: ml_collections.ConfigDict, official: Any, decode: bool, notes: list[str]):
    """ImageBert.generate with the official yaml's sampling settings (checked against ours); + TiTok decode_tokens."""
    from modeling.maskgit import ImageBert
    from modeling.titok import TiTok

    generator = official.model.generator
    settings = {
        "guidance_scale": generator.guidance_scale,
        "guidance_decay": generator.guidance_decay,
        "guidance_scale_pow": generator.get("guidance_scale_pow", 3.0),
        "randomize_temperature": generator.randomize_temperature,
        "softmax_temperature_annealing": generator.get("softmax_temperature_annealing", False),
        "num_sample_steps": generator.num_steps,
    }
    ours = config.sampling
    mine = {
        "guidance_scale": ours.guidance_scale,
        "guidance_decay": ours.guidance_schedule,
        "guidance_scale_pow": ours.guidance_power,
        "randomize_temperature": ours.randomize_temperature,
        "softmax_temperature_annealing": ours.softmax_temperature_annealing,
        "num_sample_steps": ours.num_steps,
    }
    _check("sampling", mine, settings, notes)
    model = ImageBert(official).eval()  # demo_util.sample_fn: generator.eval()
    tokenizer = TiTok(official).eval() if decode else None
    labels = torch.arange(config.batch_size) % generator.condition_num_classes

    def step() -> None:
        ids = model.generate(condition=labels, **settings)  # @torch.no_grad
        if tokenizer is not None:
            with torch.no_grad():
                images = tokenizer.decode_tokens(ids.view(ids.shape[0], -1))
                (torch.clamp(images, 0.0, 1.0) * 255.0).to(torch.uint8)

    return step


def official_times(step: Callable[[], None], steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------------- driver


def run_case(case: Case, args: argparse.Namespace, root: pathlib.Path) -> dict[str, Any]:
    batch = args.batch or case.batch
    config = our_config(case, batch, args.clustering_vq)
    notes: list[str] = []
    official = official_config(case, config, root, notes)
    load = {"start": os.getloadavg()}
    print(f"[{case.name}] batch {batch}: titok_jax ...", flush=True)
    if case.kind == "sample":
        ours = ours_sample(config, args.steps, args.warmup, args.sample_decode)
    else:
        ours = ours_train(config, args.steps, args.warmup)
    jax.clear_caches()
    gc.collect()
    load["between"] = os.getloadavg()
    print(f"[{case.name}] batch {batch}: official ...", flush=True)
    torch.manual_seed(0)
    if case.kind == "tokenizer":
        step = official_tokenizer_step(case, config, official, args.clustering_vq)
    elif case.kind == "generator":
        step = official_generator_step(config, official)
    else:
        step = official_sample_step(config, official, args.sample_decode, notes)
    theirs = official_times(step, args.steps, args.warmup)
    del step
    gc.collect()
    load["end"] = os.getloadavg()
    ours_s = statistics.median(ours["step_times_s"])
    official_s = statistics.median(theirs)
    record = {
        "case": case.name,
        "kind": case.kind,
        "batch": batch,
        "ours_config": case.spec,
        "ours_overrides": {
            **case.overrides,
            **({"model.clustering_vq": True} if args.clustering_vq and "model.clustering_vq" in case.overrides else {}),
        },
        "official_config": case.official_yaml or "derived from ours",
        "official_vq_model": dict(official.model.vq_model),
        "sample_decode": bool(args.sample_decode) if case.kind == "sample" else None,
        "ours": ours,
        "official": {"step_times_s": theirs},
        "ours_s_per_image": ours_s / batch,
        "official_s_per_image": official_s / batch,
        "official_over_ours": official_s / ours_s,
        "load_average_1_5_15": load,
        "notes": notes,
    }
    for note in notes:
        print(f"[{case.name}] note: {note}")
    print(
        f"[{case.name}] median step: titok_jax {ours_s:.3f} s (compile {ours['compile_s']:.1f} s), "
        f"official {official_s:.3f} s -> official/ours {official_s / ours_s:.2f}",
        flush=True,
    )
    return record


def format_table(records: list[dict[str, Any]]) -> str:
    header = ("case", "batch", "ours s/image", "official s/image", "official/ours", "ours img/s", "official img/s")
    rows = [header]
    for r in records:
        rows.append(
            (
                r["case"] + (" (+decode)" if r["sample_decode"] else ""),
                str(r["batch"]),
                f"{r['ours_s_per_image']:.4f}",
                f"{r['official_s_per_image']:.4f}",
                f"{r['official_over_ours']:.2f}",
                f"{1 / r['ours_s_per_image']:.2f}",
                f"{1 / r['official_s_per_image']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="A checkout of github.com/bytedance/1d-tokenizer.")
    parser.add_argument("--official_commit", default=None, help="Its commit (read with git when it is a work tree).")
    parser.add_argument("--cases", default="tiny", help=f"Comma-separated, of: {','.join(CASES)} (or 'all').")
    parser.add_argument("--batch", type=int, default=None, help="Batch of every case (default: each case's own).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps (the median is reported).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first (after compilation for ours).")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--sample_decode", action="store_true", help="l32_sample: also decode the tokens to pixels.")
    parser.add_argument("--clustering_vq", action="store_true", help="tiny / bl64_vq: clustering VQ on both sides.")
    parser.add_argument("--out", default=None, help="Write the records as JSON here.")
    args = parser.parse_args()
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    root = pathlib.Path(args.official).resolve()
    import_official(root)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)

    records = [run_case(CASES[name], args, root) for name in names]
    table = format_table(records)
    print()
    print(
        f"titok_jax (jax {jax.__version__}, {jax.devices()[0].device_kind}) vs official @ "
        f"{official_commit(root, args.official_commit)[:12]} (torch {torch.__version__} eager, "
        f"{torch.get_num_threads()} threads), fp32, median of {args.steps} steps after {args.warmup}:"
    )
    print(table)
    if args.out:
        record = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "versions": {"jax": jax.__version__, "torch": torch.__version__},
            "official": {"path": str(root), "commit": official_commit(root, args.official_commit)},
            "torch_threads": torch.get_num_threads(),
            "steps": args.steps,
            "warmup": args.warmup,
            "cases": records,
            "table": table,
        }
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2, default=str)


if __name__ == "__main__":
    main()
