r"""Turn a folder of images into tokens, and tokens back into images (to eyeball reconstructions).

  python -m titok_jax.tokenize --tokenizer=BUNDLE_OR_HUB_DIR --images=DIR --output=OUT
      -> OUT/tokens.npz (tokens, files) + OUT/reconstructions/<name>.png + OUT/grid.png
  python -m titok_jax.tokenize --tokenizer=... --tokens=OUT/tokens.npz --output=OUT2
      -> OUT2/reconstructions/<name>.png + OUT2/grid.png
  python -m titok_jax.tokenize --tokenizer=VARIABLE_LENGTH --images=DIR --output=OUT --num_tokens=8
      -> tokens.npz keeps each image's first 8 tokens; the reconstructions decode that prefix

--num_tokens=k (1..K) needs a tokenizer trained with token dropout (model.token_dropout uniform / pow2) when
k < K; such a tokenizer also decodes a tokens.npz of fewer than K tokens per image as it is.

Images (searched recursively) are resized (shorter side, bicubic) and center-cropped to the
tokenizer's size, the evaluation preprocessing; the printed summary says how many were, from which
sizes. `grid.png` shows originals over reconstructions (the first 128, rows labelled, tiles of at
least 128 px). A file that cannot be read (undecodable, truncated, unreadable) is skipped and counted,
as training does: the summary lists it with its reason, and OUT/skipped.txt lists them all.

With --tokens, the names in the file's 'files' array must be relative paths inside OUT ('im0.png',
'sub/im0.png'); an absolute name or one with '..' (or a '.'/empty part, or a backslash) is refused
before anything is written, so a tokens.npz from elsewhere cannot choose where files go.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import app

from titok_jax import cli
from titok_jax.inference import folders
from titok_jax.inference.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Options:
    tokenizer: str = cli.option(None, "A titok_jax bundle or an official hub directory.", required=True)
    config: str | None = cli.option(None, "config.json / official .yaml when --tokenizer is a weights file.")
    images: str | None = cli.option(None, "Folder of images to tokenize.")
    tokens: str | None = cli.option(None, "tokens.npz to turn back into images.")
    output: str = cli.option(None, "Output directory.", required=True)
    batch_size: int = cli.option(64, "Images per call.")
    num_tokens: int = cli.option(
        0, "Keep / decode only each image's first k tokens (a variable-length tokenizer, model.token_dropout; 0: all)."
    )


def run(config, options: Options) -> dict[str, Any]:
    del config  # this command names no experiment config
    if (options.images is None) == (options.tokens is None):
        raise app.UsageError("Give exactly one of --images (encode) and --tokens (decode).")
    tokenizer = Tokenizer.load(options.tokenizer, config=options.config)
    if options.images is not None:
        return folders.tokenize_folder(
            tokenizer, options.images, options.output, options.batch_size, options.num_tokens
        )
    return folders.detokenize(tokenizer, options.tokens, options.output, options.batch_size, options.num_tokens)


if __name__ == "__main__":
    cli.main(run, Options)
