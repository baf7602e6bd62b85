r"""Benchmark harness: step time, images/s per device, TFLOP/s, MFU, compile time, memory.

  python -m titok_jax.benchmark --config=experiments/titok_two_stage.py:s128,stage=1 \
      [--mode=train|encode|sample|tokens|data] [--steps=10] [--warmup=2] [--batch=B] [--out=FILE.json] \
      [--peak_tflops=X] [--config.model.dtype=bfloat16 ...]

The modes and how times and FLOPs are measured: titok_jax/tasks/benchmark.py.
"""

from __future__ import annotations

import dataclasses
import json

from titok_jax import cli
from titok_jax.tasks import benchmark


@dataclasses.dataclass(frozen=True)
class Options:
    mode: str = cli.option("train", "What to time.", choices=benchmark.MODES)
    steps: int = cli.option(10, "Timed calls.")
    warmup: int = cli.option(2, "Untimed calls after compilation.")
    batch: int | None = cli.option(None, "Global batch size (default: the config's).")
    peak_tflops: float | None = cli.option(None, "Peak TFLOP/s of one device (overrides the table).")
    out: str | None = cli.option(None, "Write the record as JSON here.")


def run(config, options: Options) -> None:
    record = benchmark.run_benchmark(
        config, options.mode, options.steps, options.warmup, options.batch, options.peak_tflops
    )
    print(benchmark.format_table(record))
    if options.out:
        with open(options.out, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)


if __name__ == "__main__":
    cli.main(run, Options, config="required")
