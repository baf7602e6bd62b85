"""Reproduction of the released models' published numbers: one call per release, our numbers next to the
paper's (bytedance/1d-tokenizer README and paper, ../shared/spec/titok-reference.md).

Tokenizers: rFID / IS / PSNR / SSIM / codebook of the reconstructions of an image set (ImageNet val: an image
folder or the TFDS split), resized on the shorter side and center-cropped to the tokenizer's size, rounded to
/255 (the official rFID protocol). Generators: `num_images` class-balanced samples (50 per class for 50k) with
the checkpoint's own sampler settings, scored by the ADM suite against a reference batch
(VIRTUAL_imagenet256_labeled.npz).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax.numpy as jnp
import ml_collections

from titok_jax.data import pipeline
from titok_jax.evaluation import tokenizer_eval
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.inference.generator import Generator
from titok_jax.inference.tokenizer import Tokenizer
from titok_jax.tasks import evaluate


@dataclasses.dataclass(frozen=True)
class Release:
    hub_id: str
    published: dict[str, float]  # metric -> the published value (rfid for tokenizers, gfid / is for generators)
    tokenizer: str = ""  # generators: the release of the tokenizer they model

    @property
    def is_generator(self) -> bool:
        return bool(self.tokenizer)


def _tokenizer(name: str, rfid: float) -> Release:
    return Release(f"yucornetto/{name}", {"rfid": rfid})


RELEASES = {
    "tokenizer_titok_l32_imagenet": _tokenizer("tokenizer_titok_l32_imagenet", 2.21),
    "tokenizer_titok_b64_imagenet": _tokenizer("tokenizer_titok_b64_imagenet", 1.70),
    "tokenizer_titok_s128_imagenet": _tokenizer("tokenizer_titok_s128_imagenet", 1.71),
    "tokenizer_titok_bl64_vq8k_imagenet": _tokenizer("tokenizer_titok_bl64_vq8k_imagenet", 2.06),
    "tokenizer_titok_bl128_vq8k_imagenet": _tokenizer("tokenizer_titok_bl128_vq8k_imagenet", 1.49),
    "tokenizer_titok_sl256_vq8k_imagenet": _tokenizer("tokenizer_titok_sl256_vq8k_imagenet", 1.03),
    "tokenizer_titok_ll32_vae_c16_imagenet": _tokenizer("tokenizer_titok_ll32_vae_c16_imagenet", 1.61),
    "tokenizer_titok_bl64_vae_c16_imagenet": _tokenizer("tokenizer_titok_bl64_vae_c16_imagenet", 1.25),
    "tokenizer_titok_bl128_vae_c16_imagenet": _tokenizer("tokenizer_titok_bl128_vae_c16_imagenet", 0.84),
    "generator_titok_l32_imagenet": Release(
        "yucornetto/generator_titok_l32_imagenet", {"gfid": 2.77, "is": 194.0}, "tokenizer_titok_l32_imagenet"
    ),
    "generator_titok_b64_imagenet": Release(
        "yucornetto/generator_titok_b64_imagenet", {"gfid": 2.48}, "tokenizer_titok_b64_imagenet"
    ),
    "generator_titok_s128_imagenet": Release(
        "yucornetto/generator_titok_s128_imagenet", {"gfid": 1.97, "is": 281.8}, "tokenizer_titok_s128_imagenet"
    ),
}


def release(name: str) -> Release:
    if name not in RELEASES:
        raise ValueError(f"Unknown release {name!r}; the released models: {', '.join(RELEASES)}.")
    return RELEASES[name]


def _load_tokenizer(path: str) -> Tokenizer:
    """A local checkpoint directory or file, else a hub repo id (downloaded into / read from the hub cache)."""
    return Tokenizer.load(path) if os.path.exists(path) else Tokenizer.from_pretrained(path)


def eval_data_config(image_size: int, images: str = "", tfds_data_dir: str = "") -> ml_collections.ConfigDict:
    """ImageNet val as an image folder (class subfolders or loose images) or the TFDS validation split."""
    if bool(images) == bool(tfds_data_dir):
        raise ValueError("Give the evaluation images: --images=DIR (an ImageNet val folder) or --tfds_data_dir=DIR.")
    data = pipeline.default_data_config()
    data.image_size = image_size
    if images:
        if not os.path.isdir(images):
            raise NotADirectoryError(f"--images={images!r} is not a directory of images.")
        data.update(source="image_folder", root=images, eval_root=images, labels="auto")
    else:
        data.update(source="tfds", name="imagenet2012", eval_split="validation", data_dir=tfds_data_dir)
    pipeline.validate_data_config(data)
    return data


def _pixels(model: Any, params: Any, images: jnp.ndarray, aux: Any) -> jnp.ndarray:
    del aux
    return jnp.clip(model.apply(params, images, sample_posterior=False)[0], 0.0, 1.0)


def reproduce_tokenizer(
    name: str,
    checkpoint: str = "",
    images: str = "",
    tfds_data_dir: str = "",
    inception_weights: str = "",
    batch_size: int = 64,
    max_images: int = 0,
) -> dict[str, Any]:
    """A released tokenizer (hub dir / bundle / hub id; default its hub id) on an image set -> results."""
    entry = release(name)
    if entry.is_generator:
        raise ValueError(f"{name} is a generator; reproduce_generator scores it.")
    tok = _load_tokenizer(checkpoint or entry.hub_id)
    data = eval_data_config(tok.model.image_size, images, tfds_data_dir)
    inception_vars, real = tokenizer_eval.load_inception(inception_weights)
    batch_size = -(-batch_size // tok.mesh.devices.size) * tok.mesh.devices.size
    results = tokenizer_eval.evaluate_tokenizer(
        functools.partial(_pixels, tok.model), functools.partial(tokenizer_lib.encode, tok.model), tok.model,
        tok.variables, {}, data, batch_size, tok.mesh, inception_vars, real, max_images=max_images, progress=True,
    )  # fmt: skip
    protocol = {
        "images": os.path.abspath(images) if images else f"tfds imagenet2012 validation ({tfds_data_dir})",
        "transform": f"shorter side to {tok.model.image_size} (bicubic, antialias), center crop, /255 rounding",
        **evaluate.inception_protocol(inception_weights),
    }
    return _with_comparison(name, entry, results, protocol, real)


def reproduce_generator(
    name: str,
    reference: str,
    checkpoint: str = "",
    tokenizer: str = "",
    inception_weights: str = "",
    num_images: int = 50_000,
    batch_size: int = 64,
    output_dir: str = "",
) -> dict[str, Any]:
    """A released generator (official hub dir / bundle / hub id) with its tokenizer: samples -> ADM suite."""
    entry = release(name)
    if not entry.is_generator:
        raise ValueError(f"{name} is a tokenizer; reproduce_tokenizer scores it.")
    if not os.path.isfile(reference):  # before anything is loaded or sampled
        raise FileNotFoundError(f"--reference={reference!r} does not exist (e.g. VIRTUAL_imagenet256_labeled.npz).")
    tok = _load_tokenizer(tokenizer or RELEASES[entry.tokenizer].hub_id)
    path = checkpoint or entry.hub_id
    generator = Generator.load(path, tokenizer=tok) if os.path.exists(path) else Generator.from_pretrained(path, tok)
    output_dir = output_dir or os.path.join(os.getcwd(), f"reproduce_{name}")
    results = evaluate.score_generator(generator, reference, inception_weights, num_images, batch_size, output_dir)
    return _with_comparison(name, entry, results, results.pop("protocol"), real=bool(inception_weights))


def _with_comparison(
    name: str, entry: Release, results: dict[str, Any], protocol: dict[str, Any], real: bool
) -> dict[str, Any]:
    """results + {"release", "published", "protocol", "table": ours next to the published numbers, as text}."""
    rows = []
    for metric, published in entry.published.items():
        ours = results.get(tokenizer_eval.metric_name(metric, real))
        rows.append((metric, ours, published))
    table = [f"{name}: ours vs published", "| metric | ours | published |", "|---|---|---|"]
    table += [f"| {m} | {'-' if o is None else f'{o:.3f}'} | {p:.2f} |" for m, o, p in rows]
    if not real:
        table.append("(random Inception weights: our numbers are not comparable; pass --inception_weights)")
    return {**results, "release": name, "published": entry.published, "protocol": protocol, "table": "\n".join(table)}
