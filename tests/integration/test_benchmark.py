"""The benchmark harness: a record with real timings and XLA's FLOPs, the MFU arithmetic, the peak table."""

import json

import pytest
from train_helpers import tiny_config

from titok_jax.tasks import benchmark


def test_train_and_encode_records(tmp_path):
    config = tiny_config()
    record = benchmark.run_benchmark(config, "train", steps=2, warmup=1, batch=16, peak_tflops=0.5)
    results = record["results"]
    assert record["num_devices"] == 8 and record["batch_size"] == 16 and record["peak_flops_per_device"] == 0.5e12
    assert results["images_per_s"] == pytest.approx(16 / results["step_time_s"])
    assert results["images_per_s_per_device"] == pytest.approx(results["images_per_s"] / 8)
    # XLA's count for one step of this model on 2 images per device: tens of MFLOPs, not zero or absurd.
    assert 1e6 < results["flops_per_call_per_device"] < 1e10
    achieved = results["flops_per_call_per_device"] / results["step_time_s"]
    assert results["tflops_per_s_per_device"] == pytest.approx(achieved / 1e12)
    assert results["mfu"] == pytest.approx(achieved / 0.5e12)
    assert results["compile_s"] > 0 and results["compiled_memory_bytes"]["arguments"] > 0
    assert "MFU" in benchmark.format_table(record)
    json.dumps(record, default=str)  # the --out file

    encode = benchmark.run_benchmark(config, "encode", steps=2, warmup=0, batch=8)["results"]
    assert encode["mode"] == "encode" and encode["mfu"] is None  # no peak for a CPU without an override
    assert encode["flops_per_call_per_device"] < results["flops_per_call_per_device"]  # no backward pass


def test_peak_table_and_refusals():
    assert benchmark.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert benchmark.peak_flops("TPU v5 lite") == 197e12
    assert benchmark.peak_flops("cpu") is None
    assert benchmark.peak_flops("cpu", override_tflops=2.0) == 2e12
    with pytest.raises(ValueError, match="mode must be one of"):
        benchmark.run_benchmark(tiny_config(), "inference")
    with pytest.raises(ValueError, match="needs a generator config"):
        benchmark.run_benchmark(tiny_config(), "sample", steps=1)


def test_kv_cache_sampling_is_faster_than_recomputing_the_prefix():
    """The tiny RAR at 64 tokens (guided: a doubled batch): the K/V cache against recomputing every step."""
    from helpers import RAR_GENERATOR

    from titok_jax import configs

    config = configs.load_config(f"{RAR_GENERATOR}:tiny")
    config.model.num_tokens = 64  # the tokens mode needs no tokenizer
    record = benchmark.run_benchmark(config, "tokens", steps=3, warmup=1, batch=32)
    results = record["results"]
    print(benchmark.format_table(record))
    assert results["num_tokens"] == 64 and results["step_time_s"] == results["cached_step_time_s"]
    # Measured on a 2-core CPU: 10.6x (1 device, batch 8); 6.4x and 8.2x here (8 fake devices, batch 32).
    assert results["kv_cache_speedup"] > 3.0
