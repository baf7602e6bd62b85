r"""Export a trained tokenizer (a titok_jax bundle or an official hub directory) or generator (a bundle with its tokenizer inside) for inference.

  python -m titok_jax.export --config=experiments/titok_single_stage.py:tiny_vq \
      --workdir=/tmp/titok_tiny --output=/tmp/titok_tiny_export [--format=bundle|pytorch] \
      [--ema=true] [--dtype=float32] [--overwrite]
  # an official generator checkpoint + its tokenizer -> a generator bundle
  python -m titok_jax.export --official_generator=generator_titok_l32_imagenet/ \
      --tokenizer=tokenizer_titok_l32_imagenet/ --output=/data/l32_generator_bundle
  # either, then uploaded to a hub model repo (created if new; log in first: hf auth login, or HF_TOKEN)
  python -m titok_jax.export ... --push_to_hub=yourname/titok_tiny [--private]

`bundle`: titok_jax_bundle.json + params.safetensors (config + weights, no optimizer
state), loaded by `titok_jax.Tokenizer.load` without the training config.
`pytorch`: config.json + model.safetensors in the official key layout, which the official
code's `TiTok.from_pretrained(DIR)` loads (only for the official ViT sizes and pixel decoder).
The newest checkpoint is exported; `--ema` (default) takes the EMA weights the evaluation uses.
`--push_to_hub` uploads the output folder once the export is written (nothing is pushed when it fails);
`Tokenizer.from_pretrained` / `Generator.from_pretrained` load it back by that name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app

from titok_jax import cli
from titok_jax.inference import hub
from titok_jax.inference.bundle import DTYPES
from titok_jax.tasks import export


@dataclasses.dataclass(frozen=True)
class Options:
    workdir: str | None = cli.option(None, "The training workdir (tokenizer or generator).")
    output: str = cli.option(None, "Output directory (new or empty).", required=True)
    format: str = cli.option("bundle", "bundle (titok_jax) or pytorch (official hub layout).", choices=export.FORMATS)
    ema: bool = cli.option(True, "Export the EMA weights (else the raw training weights).")
    dtype: str = cli.option("float32", "Storage dtype of the weights.", choices=DTYPES)
    overwrite: bool = cli.option(False, "Replace the files of an existing export in --output.")
    official_generator: str | None = cli.option(None, "An official generator hub directory or weights file.")
    official_config: str | None = cli.option(None, "The official generator's config .yaml/.json (weights file).")
    tokenizer: str | None = cli.option(None, "The tokenizer --official_generator models (hub dir or bundle).")
    push_to_hub: str | None = cli.option(None, "After exporting, upload --output to this hub model repo (org/name).")
    private: bool = cli.option(False, "Create the --push_to_hub repo private (an existing repo keeps its visibility).")


def run(config, options: Options) -> dict[str, Any]:
    if options.private and not options.push_to_hub:
        raise app.UsageError("--private applies to --push_to_hub=org/name: add it, or drop --private.")
    if options.push_to_hub:
        hub.check_push_target(options.push_to_hub)  # a bad name fails now, not after a long export
    summary = _export(config, options)
    if options.push_to_hub:
        summary["hub"] = hub.push(options.output, options.push_to_hub, private=options.private)
    return summary


def _export(config, options: Options) -> dict[str, Any]:
    if options.official_generator:
        if not options.tokenizer:
            raise app.UsageError("--official_generator needs --tokenizer (the tokenizer it models).")
        return export.export_official_generator(
            options.official_generator, options.tokenizer, options.output, options.official_config, options.dtype,
            options.overwrite,
        )  # fmt: skip
    if config is None or not options.workdir:
        raise app.UsageError("Give --config and --workdir (a training run), or --official_generator and --tokenizer.")
    return export.export(
        config, options.workdir, options.output, options.format, options.ema, options.dtype, options.overwrite
    )


if __name__ == "__main__":
    cli.main(run, Options, config="optional", config_from="workdir")
