r"""Sample class-conditional images from a trained MaskGIT or RAR generator (its EMA params).

  python -m titok_jax.sample --config=experiments/maskgit_generator.py:tiny \
      --workdir=/tmp/titok_tiny_generator --num_images=640 [--output=DIR] [--batch_size=64]

Classes are balanced and in order (image i has class i * num_classes // N), so
`--num_images=50000` over 1000 classes gives the 50-per-class set of the 50k gFID
protocol. Writes `samples.npz` (`arr_0`: uint8 (N, H, W, 3), the layout the ADM
evaluator reads; `labels`: int32 (N,); `tokens`: int32 (N, K)) and every sample in labelled grids: one row
per class (the class name for synthetic shapes and class folders, else its id; more than 16 samples wrap),
tiles of at least 128 px, 16 rows per page in grid.png, grid_1.png, ...
Every batch is one jitted call (the whole decoding loop on device), sharded over the
devices; sampling settings come from config.sampling (override them as flags, e.g.
`--config.sampling.guidance_scale=3.0`). The same seed gives the same images. `--num_tokens=k` samples
k-token prefixes for a variable-length tokenizer (RAR stops after k; MaskGIT needs config.prefix_lengths).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from titok_jax import cli
from titok_jax.tasks.sample import sample


@dataclasses.dataclass(frozen=True)
class Options:
    workdir: str = cli.option(None, "The generator's training workdir.", required=True)
    num_images: int = cli.option(50_000, "How many images (balanced over the classes).")
    output: str | None = cli.option(None, "Output directory (default WORKDIR/samples/step_S).")
    batch_size: int = cli.option(64, "Global images per sampling call.")
    seed: int = cli.option(0, "Sampling seed.")
    num_tokens: int = cli.option(0, "Sample k-token prefixes (0: all K); needs a variable-length tokenizer.")


def run(config, options: Options) -> dict[str, Any]:
    return sample(
        config, options.workdir, options.num_images, options.output, options.batch_size, options.seed,
        options.num_tokens or None,
    )  # fmt: skip


if __name__ == "__main__":
    cli.main(run, Options, config="required", distributed=True, config_from="workdir")
