r"""Per-device memory of a config on a mesh, before paying for the devices.

  python -m titok_jax.memory --config=experiments/titok_two_stage.py:l32 --config.mesh.fsdp=8 \
      [--num_devices=8] [--compile] [--batch=B]

Reports the bytes each device holds of the train state (parameters, optimizer
state, EMA, discriminator), from the shardings the driver would give them, next to
the same state fully replicated; with --compile, XLA's memory estimate of the
compiled train step (arguments, outputs, temporaries). Nothing is allocated: the
state, the batch and the frozen networks are abstract (jax.eval_shape), so an L-32
on a 64-device mesh can be sized on a laptop with --num_devices=64 (fake CPU
devices; the CPU compiler's temporaries approximate an accelerator's).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from titok_jax import configs
from titok_jax import sharding as sh

STATE_PARTS = ("params", "opt_state", "ema_params", "discriminator", "lecam", "codebook_usage_ema")


def _leaf_bytes(leaf: Any, per_device: bool) -> int:
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        return 0
    shape = leaf.sharding.shard_shape(leaf.shape) if per_device else leaf.shape
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def tree_bytes(tree: Any, per_device: bool) -> int:
    """Bytes of a tree of abstract arrays: on one device (its shard of each leaf) or in full."""
    return sum(_leaf_bytes(leaf, per_device) for leaf in jax.tree.leaves(tree))


def abstract_recipe(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(recipe, abstract frozen weights): the frozen networks are traced, never drawn or read."""
    from titok_jax.train import build

    built = {}

    def frozen():
        built["recipe"], weights = build.build_recipe(config, random_frozen=True)
        return weights

    weights = jax.eval_shape(frozen)
    return built["recipe"], weights


def state_memory(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Per-device and fully replicated bytes of every part of the train state on `mesh`."""
    from titok_jax.train import loop

    recipe, _ = abstract_recipe(config)
    abstract, _, _ = loop.create_train_state(recipe, config, mesh)
    parts = {name: getattr(abstract, name) for name in STATE_PARTS if getattr(abstract, name, None) is not None}
    per_device = {name: tree_bytes(part, per_device=True) for name, part in parts.items()}
    replicated = {name: tree_bytes(part, per_device=False) for name, part in parts.items()}
    total_device, total_replicated = sum(per_device.values()), sum(replicated.values())
    return {
        "mesh": dict(mesh.shape),
        "num_parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params))),
        "per_device_bytes": {**per_device, "total": total_device},
        "replicated_bytes": {**replicated, "total": total_replicated},
        "reduction_vs_replicated": total_replicated / max(total_device, 1),
    }


def compiled_memory(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, int]:
    """XLA's memory estimate (per device) of the driver's train step, compiled on abstract inputs."""
    from titok_jax.train import loop

    recipe, frozen = abstract_recipe(config)
    abstract, _, shardings = loop.create_train_state(recipe, config, mesh)
    batch = {
        key: jax.ShapeDtypeStruct((config.batch_size, *value.shape[1:]), value.dtype, sharding=sh.batch_sharding(mesh, value.ndim))
        for key, value in recipe.example_batch().items()
    }  # fmt: skip
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh.replicated(mesh)), frozen)
    step = loop.make_step_fns(recipe, shardings)[bool(recipe.gan_active(config.total_steps - 1))]
    with jax.set_mesh(mesh):
        analysis = step.lower(abstract, batch, frozen).compile().memory_analysis()
    result = {
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes),
        "temporaries": int(analysis.temp_size_in_bytes),
        "generated_code": int(analysis.generated_code_size_in_bytes),
        "aliased": int(analysis.alias_size_in_bytes),
    }
    # Donated state is aliased to the outputs, so it is counted once.
    result["peak_estimate"] = result["arguments"] + result["outputs"] - result["aliased"] + result["temporaries"]
    return result


def _gib(n: int) -> str:
    return f"{n / 2**30:9.3f} GiB"


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"mesh {report['mesh']}  parameters {report['num_parameters']:,}",
        "part            per device    replicated",
    ]
    for name, value in report["per_device_bytes"].items():
        lines.append(f"{name:<14}{_gib(value)} {_gib(report['replicated_bytes'][name])}")
    lines.append(
        f"fsdp/tensor sharding holds 1/{report['reduction_vs_replicated']:.2f} of the replicated state per device"
    )
    if "compiled" in report:
        lines.append("compiled train step (XLA estimate, per device):")
        lines += [f"  {name:<14}{_gib(value)}" for name, value in report["compiled"].items()]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    config = f.config
    if f.batch:
        config.batch_size = f.batch
    configs.validate_config(config)
    mesh = sh.make_mesh(**config.mesh)
    report = state_memory(config, mesh)
    if f.compile:
        report["compiled"] = compiled_memory(config, mesh)
    print(format_report(report))
    if f.out:
        with open(f.out, "w") as out:
            json.dump(report, out, indent=2, sort_keys=True)


def _set_device_count_from_argv() -> None:
    """--num_devices=N fakes N CPU devices; it must act before jax starts its backend."""
    for arg in sys.argv[1:]:
        if arg.startswith("--num_devices="):
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={arg.split('=', 1)[1]}"
            ).strip()
            os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _set_device_count_from_argv()
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].", lock_config=True)
    flags.mark_flag_as_required("config")
    flags.DEFINE_integer("num_devices", None, "Fake this many CPU devices (size a mesh larger than this machine).")
    flags.DEFINE_bool("compile", False, "Also compile the train step for XLA's memory estimate.")
    flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
    flags.DEFINE_string("out", None, "Write the report as JSON here.")
    app.run(main)
