"""Tiny training configs for the driver tests."""

from helpers import SINGLE_STAGE, TWO_STAGE

from titok_jax import configs


def tiny_config(spec: str = "single_stage:tiny_vq", **overrides):
    """A tiny config with small batches; `overrides` are dotted keys, e.g. {'losses.discriminator_start': 0}."""
    recipe, _, arg = spec.partition(":")
    path = {"single_stage": SINGLE_STAGE, "two_stage": TWO_STAGE}[recipe]
    config = configs.load_config(f"{path}:{arg}")
    config.batch_size = 8
    config.eval_batch_size = 8
    config.data.num_examples = 256
    config.data.eval_num_examples = 16
    config.total_steps = 4
    config.log_every = 2
    config.image_every = 4
    config.checkpoint_every = 2
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config
