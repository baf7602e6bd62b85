r"""Benchmark harness (`python -m titok_jax.benchmark`): step time, images/s per device, TFLOP/s, MFU,
compile time, memory.

Modes:
  train   the config's recipe train step (tokenizer stages, single-stage, generator), exactly the
          driver's jitted step (same shardings, donated state), on a synthetic global batch
  encode  tokenizer encode throughput (images -> codes), the Tokenizer API's jitted path
  sample  generator sampling throughput (MaskGIT / RAR decoding + guidance + the tokenizer's decoder)
  tokens  generator token sampling alone, random weights, no tokenizer (so config.model.num_tokens may be
          set freely); for an autoregressive generator both with and without the K/V cache, and their ratio
  data    the grain input pipeline alone: images (or token rows) per second of this process

Times are wall-clock over `--steps` calls after `--warmup` calls, with one device sync at the
end (each step consumes the previous state, so the device queue stays full, as in training).
FLOPs come from XLA's cost analysis of the compiled program (per device); MFU divides the
achieved per-device FLOP/s by the device's peak (a table of dense bf16 peaks; `--peak_tflops`
overrides, e.g. for fp32 runs or CPUs, which have no entry). Frozen networks (VQGAN teacher,
perceptual nets) are drawn at random: speed does not depend on their values.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from titok_jax import recipes
from titok_jax import sharding as sh
from titok_jax.inference import generator as generator_lib
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.models.generators import generator_from_config, is_autoregressive
from titok_jax.models.titok import titok_from_config
from titok_jax.train.state import create_train_state
from titok_jax.train.step import make_step_fns

MODES = ("train", "encode", "sample", "tokens", "data")

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device_kind: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device, from the table (longest matching name) or the override."""
    if override_tflops:
        return override_tflops * 1e12
    matches = [name for name in PEAK_FLOPS if name.lower() in device_kind.lower()]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def _versions() -> dict[str, str]:
    import flax
    import optax
    import orbax.checkpoint

    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "python": platform.python_version(),
    }


def _compiled_stats(compiled: Any) -> dict[str, Any]:
    """Per-device FLOPs and XLA's memory estimate of a compiled program."""
    stats: dict[str, Any] = {"flops_per_call": None, "memory_bytes": None}
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    if cost and cost.get("flops", 0) > 0:
        stats["flops_per_call"] = float(cost["flops"])
    memory = compiled.memory_analysis()
    if memory is not None:
        stats["memory_bytes"] = {
            "arguments": int(memory.argument_size_in_bytes),
            "outputs": int(memory.output_size_in_bytes),
            "temporaries": int(memory.temp_size_in_bytes),
            "generated_code": int(memory.generated_code_size_in_bytes),
        }
    return stats


def _peak_device_memory() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def time_calls(
    call: Callable[[Any], Any], carry: Any, steps: int, warmup: int
) -> tuple[float, Any]:  # fmt: skip
    """Seconds per call of `carry = call(carry)` over `steps` calls after `warmup`, synced once at the end."""
    for _ in range(warmup):
        carry = call(carry)
    jax.block_until_ready(carry)
    start = time.perf_counter()
    for _ in range(steps):
        carry = call(carry)
    jax.block_until_ready(carry)
    return (time.perf_counter() - start) / steps, carry


def _summary(mode: str, seconds: float, items_per_call: int, compile_s: float, stats: dict[str, Any]) -> dict[str, Any]:
    devices = jax.device_count()
    flops = stats["flops_per_call"]
    achieved = flops / seconds if flops else None  # per device: cost analysis is of the per-device program
    return {
        "mode": mode,
        "step_time_s": seconds,
        "items_per_call": items_per_call,
        "images_per_s": items_per_call / seconds,
        "images_per_s_per_device": items_per_call / seconds / devices,
        "compile_s": compile_s,
        "flops_per_call_per_device": flops,
        "tflops_per_s_per_device": achieved / 1e12 if achieved else None,
        "mfu": None,  # set by run_benchmark from the device's peak
        "compiled_memory_bytes": stats["memory_bytes"],
        "peak_device_memory_bytes": _peak_device_memory(),
    }


def _synthetic_batch(recipe: Any, batch_size: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    example = recipe.example_batch()
    rng = np.random.default_rng(0)
    local = {}
    for key, value in example.items():
        shape = (batch_size // jax.process_count(), *value.shape[1:])
        if jnp.issubdtype(value.dtype, jnp.integer):
            high = getattr(recipe.model, "codebook_size", 2) if key == "tokens" else 2
            local[key] = rng.integers(0, high, shape).astype(np.int32)
        else:
            local[key] = rng.uniform(0, 1, shape).astype(np.float32)
    return {k: jax.make_array_from_process_local_data(sh.batch_sharding(mesh, v.ndim), v) for k, v in local.items()}


def benchmark_train(config: ml_collections.ConfigDict, steps: int, warmup: int, gan: bool | None = None) -> dict:
    recipe, frozen = recipes.lookup(config).build(config, random_frozen=True)
    mesh = sh.make_mesh(**config.mesh)
    frozen = jax.device_put(frozen, sh.replicated(mesh))
    _, init, shardings = create_train_state(recipe, config, mesh)
    gan_active = recipe.phase(config.total_steps - 1) if gan is None else gan
    step_fn = make_step_fns(recipe, shardings)[gan_active]
    with jax.set_mesh(mesh):
        state = init()
        batch = _synthetic_batch(recipe, config.batch_size, mesh)
        start = time.perf_counter()
        compiled = step_fn.lower(state, batch, frozen).compile()
        compile_s = time.perf_counter() - start
        seconds, _ = time_calls(lambda s: compiled(s, batch, frozen)[0], state, steps, warmup)
    result = _summary("train", seconds, config.batch_size, compile_s, _compiled_stats(compiled))
    result["gan_active"] = bool(gan_active)
    return result


def benchmark_encode(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict:
    model = titok_from_config(config.model)
    images = jnp.zeros((1, *model.image_shape), jnp.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), images)
    tok = tokenizer_lib.Tokenizer(model, {"params": variables["params"]})
    batch = np.random.default_rng(0).uniform(0, 1, (config.batch_size, *model.image_shape)).astype(np.float32)
    sharded, _ = tok._sharded(batch)
    start = time.perf_counter()
    compiled = tokenizer_lib.encode.lower(model, tok.variables, sharded).compile()
    compile_s = time.perf_counter() - start

    def call(carry):
        return compiled(tok.variables, sharded)

    seconds, _ = time_calls(call, None, steps, warmup)
    return _summary("encode", seconds, config.batch_size, compile_s, _compiled_stats(compiled))


def benchmark_sample(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict:
    module = recipes.lookup(config)
    if module.ARTIFACT != recipes.GENERATOR:
        raise ValueError("--mode=sample needs a generator config (experiments/maskgit_generator.py:...).")
    recipe, frozen = module.build(config, random_frozen=True)
    mesh = sh.make_mesh(**config.mesh)
    _, init, _ = create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        state = init()
        tokenizer_params = jax.device_put(frozen["tokenizer"], sh.replicated(mesh))
        class_ids = jax.make_array_from_process_local_data(
            sh.batch_sharding(mesh, 1), (np.arange(config.batch_size // jax.process_count()) % 1000).astype(np.int32)
        )
        key = jax.random.PRNGKey(0)
        sample = functools.partial(generator_lib.generate_batch, recipe.model, recipe.sampling, recipe.tokenizer)
        start = time.perf_counter()
        compiled = jax.jit(sample).lower(state.ema_params, tokenizer_params, class_ids, key).compile()
        compile_s = time.perf_counter() - start
        seconds, _ = time_calls(
            lambda _: compiled(state.ema_params, tokenizer_params, class_ids, key), None, steps, warmup
        )
    return _summary("sample", seconds, config.batch_size, compile_s, _compiled_stats(compiled))


def _time_token_sampler(model: Any, settings: Any, variables: Any, class_ids: jax.Array, steps: int, warmup: int):
    sample = jax.jit(functools.partial(generator_lib.sample_tokens, model, settings))
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    compiled = sample.lower(variables, class_ids, key).compile()
    compile_s = time.perf_counter() - start
    seconds, _ = time_calls(lambda _: compiled(variables, class_ids, key), None, steps, warmup)
    return seconds, compile_s, compiled


def benchmark_tokens(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict:
    model = generator_from_config(config.model)
    settings = generator_lib.settings_of(model, config.sampling)
    mesh = sh.make_mesh(**config.mesh)
    with jax.set_mesh(mesh):
        abstract = generator_lib.abstract_variables(model)
        init = jax.jit(
            lambda: model.init(jax.random.PRNGKey(0), *(jnp.zeros(x.shape, x.dtype) for x in _init_args(model))),
            out_shardings=sh.logical_shardings(abstract, mesh),
        )
        variables = init()
        local = (np.arange(config.batch_size // jax.process_count()) % model.num_classes).astype(np.int32)
        class_ids = jax.make_array_from_process_local_data(sh.batch_sharding(mesh, 1), local)
        seconds, compile_s, compiled = _time_token_sampler(model, settings, variables, class_ids, steps, warmup)
        result = _summary("tokens", seconds, config.batch_size, compile_s, _compiled_stats(compiled))
        result["num_tokens"] = model.num_tokens
        if is_autoregressive(model):
            uncached = dataclasses.replace(settings, kv_cache=not settings.kv_cache)
            other_s, _, _ = _time_token_sampler(model, uncached, variables, class_ids, steps, warmup)
            cached_s, uncached_s = (seconds, other_s) if settings.kv_cache else (other_s, seconds)
            result.update(
                cached_step_time_s=cached_s, uncached_step_time_s=uncached_s, kv_cache_speedup=uncached_s / cached_s
            )
    return result


def _init_args(model: Any) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    return jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32)


def benchmark_data(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict:
    train_iter, _ = recipes.lookup(config).make_data(config)
    for _ in range(warmup):
        next(train_iter)
    start = time.perf_counter()
    for _ in range(steps):
        next(train_iter)
    seconds = (time.perf_counter() - start) / steps
    per_process = config.batch_size // jax.process_count()
    return {
        "mode": "data",
        "batch_time_s": seconds,
        "images_per_s_per_process": per_process / seconds,
        "workers": config.data.get("worker_count", 0),
    }


def run_benchmark(
    config: ml_collections.ConfigDict,
    mode: str = "train",
    steps: int = 10,
    warmup: int = 2,
    batch: int | None = None,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
    """Runs one benchmark and returns the JSON-able record (device, versions, config, results)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}.")
    config = config.copy_and_resolve_references()
    if batch:
        config.batch_size = batch
    if mode == "tokens":  # random weights and no tokenizer: only the generator's own fields must hold
        generator_from_config(config.model)
    else:
        recipes.validate(config)
    runner = {
        "train": benchmark_train,
        "encode": benchmark_encode,
        "sample": benchmark_sample,
        "tokens": benchmark_tokens,
        "data": benchmark_data,
    }
    results = runner[mode](config, steps, warmup)
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind, peak_tflops)
    if results.get("tflops_per_s_per_device") and peak:
        results["mfu"] = results["tflops_per_s_per_device"] * 1e12 / peak
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "peak_flops_per_device": peak,
        "versions": _versions(),
        "variant": config.get("variant", ""),
        "batch_size": config.batch_size,
        "steps": steps,
        "config": json.loads(config.to_json_best_effort()),
        "results": results,
    }


def format_table(record: dict[str, Any]) -> str:
    r = record["results"]
    rows = [("device", f"{record['num_devices']} x {record['device_kind']}"), ("mode", r["mode"])]
    if r["mode"] == "data":
        rows += [
            ("images/s/process", f"{r['images_per_s_per_process']:.1f}"),
            ("batch time", f"{r['batch_time_s']:.4f} s"),
        ]
    else:
        rows += [
            ("step time", f"{r['step_time_s'] * 1e3:.1f} ms"),
            ("images/s/device", f"{r['images_per_s_per_device']:.2f}"),
            ("compile", f"{r['compile_s']:.1f} s"),
            (
                "TFLOP/s/device",
                "n/a" if r["tflops_per_s_per_device"] is None else f"{r['tflops_per_s_per_device']:.3f}",
            ),
            ("MFU", "n/a (no peak; --peak_tflops)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"),
        ]
    if "kv_cache_speedup" in r:
        rows += [
            ("cached / uncached", f"{r['cached_step_time_s'] * 1e3:.1f} / {r['uncached_step_time_s'] * 1e3:.1f} ms"),
            ("K/V cache speedup", f"{r['kv_cache_speedup']:.1f}x at {r['num_tokens']} tokens"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
