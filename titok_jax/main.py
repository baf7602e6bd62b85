r"""titok_jax entry point: trains a tokenizer recipe.

  python -m titok_jax.main --workdir=/tmp/titok_tiny \
      [--config=experiments/titok_single_stage.py:tiny_vq] [--config.total_steps=600]

Rerunning the same command resumes from the newest checkpoint in the workdir.
Multi-host: every process runs the same command; on TPU pods and SLURM the
cluster is found by itself, elsewhere add --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (see launch/).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from titok_jax import distributed
from titok_jax.train import loop

_DEFAULT_CONFIG = (
    os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "titok_single_stage.py") + ":tiny_vq"
)

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file[:variant,args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.", required=True)
distributed.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()
    metrics = loop.train(_CONFIG.value, _WORKDIR.value)
    logging.info("Final metrics: %s", metrics)
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
