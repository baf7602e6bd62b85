r"""Per-device memory of a config on a mesh, before paying for the devices.

  python -m titok_jax.memory --config=experiments/titok_two_stage.py:l32 --config.mesh.fsdp=8 \
      [--num_devices=8] [--compile] [--batch=B]

Reports the bytes each device holds of the train state (parameters, optimizer state, EMA,
discriminator) next to the same state fully replicated; with --compile, XLA's memory estimate of the
compiled train step. Nothing is allocated (titok_jax/tasks/memory.py), so `--num_devices=N` (fake CPU
devices) sizes a pod's mesh on a laptop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from titok_jax import cli


def fake_devices_from_argv(argv: list[str]) -> None:
    """--num_devices=N fakes N CPU devices; it must act before jax starts its backend."""
    for arg in argv[1:]:
        if arg.startswith("--num_devices="):
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={arg.split('=', 1)[1]}"
            ).strip()
            os.environ.setdefault("JAX_PLATFORMS", "cpu")


@dataclasses.dataclass(frozen=True)
class Options:
    num_devices: int | None = cli.option(None, "Fake this many CPU devices (size a mesh larger than this machine).")
    compile: bool = cli.option(False, "Also compile the train step for XLA's memory estimate.")
    batch: int | None = cli.option(None, "Global batch size (default: the config's).")
    out: str | None = cli.option(None, "Write the report as JSON here.")


def run(config, options: Options) -> None:
    from titok_jax.tasks import memory

    report = memory.memory_report(config, options.batch, options.compile)
    print(memory.format_report(report))
    if options.out:
        with open(options.out, "w") as out:
            json.dump(report, out, indent=2, sort_keys=True)


if __name__ == "__main__":
    fake_devices_from_argv(sys.argv)
    cli.main(run, Options, config="required")
