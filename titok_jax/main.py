r"""titok_jax entry point.

  python -m titok_jax.main --workdir=/tmp/titok_tiny \
      [--config=experiments/titok_two_stage.py:tiny] [--config.model.num_latent_tokens=8]

Until the training driver lands this runs a model smoke job: it validates the
config, builds the mesh, creates the parameters straight into their shardings,
tokenizes a batch of images and decodes the tokens, and writes a summary JSON.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from clu import parameter_overview
from ml_collections import config_flags

from titok_jax import configs
from titok_jax import sharding as sh
from titok_jax.models.titok import titok_from_config

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "titok_two_stage.py") + ":tiny"

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file[:variant,args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.", required=True)


def smoke_run(config, workdir: str) -> dict:
    """Builds the configured tokenizer on the mesh, round-trips a batch, returns a summary."""
    configs.validate_config(config)
    mesh = sh.make_mesh(**config.mesh)
    model = titok_from_config(config.model)
    batch = mesh.shape[sh.DATA] * mesh.shape[sh.FSDP]
    rngs = {"params": jax.random.PRNGKey(config.seed), "noise": jax.random.PRNGKey(config.seed + 1)}
    images = jnp.zeros((batch, *model.image_shape), jnp.float32)
    params, _ = sh.init_sharded(lambda: model.init(rngs, images), mesh)
    logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(params))

    images = jax.device_put(
        jax.random.uniform(jax.random.PRNGKey(config.seed), (batch, *model.image_shape)),
        sh.batch_sharding(mesh, 4),
    )

    @jax.jit
    def round_trip(params, images):
        latents, info = model.apply(params, images, sample_posterior=False, method=model.encode)
        return latents, info, model.apply(params, latents, method=model.decode)

    with jax.set_mesh(mesh):
        latents, info, decoded = round_trip(params, images)
    summary = {
        "config": f"{config.recipe}:{config.variant}",
        "mesh": dict(mesh.shape),
        "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
        "image_shape": list(images.shape),
        "latent_shape": list(latents.shape),
        "decoded_shape": list(decoded.shape),
        "decodes_to_pixels": model.decodes_to_pixels,
    }
    if "indices" in info:
        summary["first_image_tokens"] = np.asarray(info["indices"][0]).tolist()
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "smoke_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    summary = smoke_run(_CONFIG.value, _WORKDIR.value)
    logging.info("Smoke run summary: %s", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
