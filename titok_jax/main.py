r"""Trains any recipe (tokenizers, generators) in a workdir.

  python -m titok_jax.main --workdir=/tmp/titok_tiny \
      [--config=experiments/titok_single_stage.py:tiny_vq] [--config.total_steps=600]

Rerunning the same command resumes from the newest checkpoint in the workdir.
Multi-host: every process runs the same command; on TPU pods and SLURM the
cluster is found by itself, elsewhere add --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (see launch/).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import logging

from titok_jax import cli, recipes

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "titok_single_stage.py") + ":tiny_vq"


@dataclasses.dataclass(frozen=True)
class Options:
    workdir: str = cli.option(None, "Directory for checkpoints, logs and outputs.", required=True)


def run(config, options: Options) -> dict[str, float]:
    try:
        metrics = recipes.train(config, options.workdir)
    except recipes.stop_reasons() as err:  # the message says it all: one line, exit 1
        logging.error("%s", err)
        sys.exit(1)
    return metrics


if __name__ == "__main__":
    cli.main(run, Options, config="optional", distributed=True, config_default=DEFAULT_CONFIG)
