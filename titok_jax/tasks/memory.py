r"""Per-device memory of a config on a mesh, before paying for the devices (`python -m titok_jax.memory`).

Reports the bytes each device holds of the train state (parameters, optimizer
state, EMA, discriminator), from the shardings the driver would give them, next to
the same state fully replicated; with --compile, XLA's memory estimate of the
compiled train step (arguments, outputs, temporaries). Nothing is allocated: the
state, the batch and the frozen networks are abstract (jax.eval_shape), so an L-32
on a 64-device mesh can be sized on a laptop with --num_devices=64 (fake CPU
devices; the CPU compiler's temporaries approximate an accelerator's).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from titok_jax import recipes
from titok_jax import sharding as sh
from titok_jax.train.state import create_train_state
from titok_jax.train.step import make_step_fns

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
    module = recipes.lookup(config)
    built = {}

    def frozen():
        built["recipe"], weights = module.build(config, random_frozen=True)
        return weights

    weights = jax.eval_shape(frozen)
    return built["recipe"], weights


def state_memory(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Per-device and fully replicated bytes of every part of the train state on `mesh`."""
    recipe, _ = abstract_recipe(config)
    abstract, _, _ = create_train_state(recipe, config, mesh)
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
    recipe, frozen = abstract_recipe(config)
    abstract, _, shardings = create_train_state(recipe, config, mesh)
    batch = {
        key: jax.ShapeDtypeStruct((config.batch_size, *value.shape[1:]), value.dtype, sharding=sh.batch_sharding(mesh, value.ndim))
        for key, value in recipe.example_batch().items()
    }  # fmt: skip
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh.replicated(mesh)), frozen)
    step = make_step_fns(recipe, shardings)[recipe.phase(config.total_steps - 1)]
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


def memory_report(config: ml_collections.ConfigDict, batch: int | None = None, compile: bool = False) -> dict[str, Any]:
    """The state's bytes per device on config.mesh (and, with `compile`, XLA's estimate of the train step)."""
    if batch:
        config = config.copy_and_resolve_references()
        config.batch_size = batch
    recipes.validate(config)
    mesh = sh.make_mesh(**config.mesh)
    report = state_memory(config, mesh)
    if compile:
        report["compiled"] = compiled_memory(config, mesh)
    return report
