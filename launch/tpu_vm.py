r"""Runs a titok_jax command on every worker of a Cloud TPU VM (a single host or a pod slice).

  python -m launch.tpu_vm --name=titok-v4-32 --zone=us-central2-b --accelerator_type=v4-32 [--spot] \
      [--dry_run] -- --config=experiments/titok_two_stage.py:l32 --workdir=gs://bucket/l32_stage1

Actions:
  run     reuse the TPU VM if it exists (else create it), copy the committed code (`git archive HEAD`) to every
          worker and install it, then run `python -m PROGRAM ARGS --distributed=on` on all workers at once
          (`--worker=all`); gcloud streams every worker's output here. `--delete_after` deletes the VM at the end.
  stop    sends SIGTERM to the program on every worker (it saves a checkpoint and exits: orbax's preemption check).
  delete  deletes the TPU VM.
On the workers `jax.distributed.initialize()` reads the pod's topology by itself, so the command is the same on
every worker. `--dry_run` prints the exact gcloud commands instead of running them.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags

from launch import common

ACTIONS = ("run", "stop", "delete")
CODE_MODES = ("copy", "installed")
REMOTE_DIR = "~/titok_jax"  # where the code lives on every worker
# What the workers install beside the code: the pinned stack plus jax's TPU runtime of the same release.
TPU_JAX = "jax[tpu]==0.10.2"


@dataclasses.dataclass(frozen=True)
class TpuVmOptions:
    name: str
    zone: str
    accelerator_type: str = "v4-8"
    version: str = "tpu-ubuntu2204-base"
    project: str | None = None
    spot: bool = False
    code: str = "copy"  # copy: ship `git archive HEAD` and pip install it; installed: the workers already have it
    program: str = common.DEFAULT_PROGRAM
    delete_after: bool = False
    archive: str = "/tmp/titok_jax_code.tar.gz"  # local path of the code archive


def _gcloud(options: TpuVmOptions, verb: str, *args: str, name_first: bool = True) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB NAME --zone ... ARGS` (scp names the VM inside its paths instead)."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", verb, *([options.name] if name_first else []), *args]
    command.append(f"--zone={options.zone}")
    if options.project:
        command.append(f"--project={options.project}")
    return command


def _on_all_workers(options: TpuVmOptions, remote_command: str) -> str:
    return shlex.join(_gcloud(options, "ssh", "--worker=all", f"--command={remote_command}"))


def create_or_reuse(options: TpuVmOptions) -> str:
    create = _gcloud(
        options, "create", f"--accelerator-type={options.accelerator_type}", f"--version={options.version}",
        *(["--spot"] if options.spot else []),
    )  # fmt: skip
    describe = _gcloud(options, "describe", "--format=value(state)")
    return f"{shlex.join(describe)} >/dev/null 2>&1 || {shlex.join(create)}"


def copy_code(options: TpuVmOptions, repo: str = common.REPO_ROOT) -> list[str]:
    install = (
        f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf ~/titok_jax_code.tar.gz -C {REMOTE_DIR} && "
        f"pip install -q -r {REMOTE_DIR}/requirements.txt -e {REMOTE_DIR} {shlex.quote(TPU_JAX)}"
    )
    return [
        shlex.join(["git", "-C", repo, "archive", "--format=tar.gz", "-o", options.archive, "HEAD"]),
        shlex.join(
            _gcloud(
                options, "scp", options.archive, f"{options.name}:~/titok_jax_code.tar.gz", "--worker=all",
                name_first=False,
            )
        ),
        _on_all_workers(options, install),
    ]  # fmt: skip


def run_program(options: TpuVmOptions, program_args: Sequence[str]) -> str:
    program = shlex.join(common.program_command(options.program, [*program_args, "--distributed=on"], "python3"))
    return _on_all_workers(options, f"cd {REMOTE_DIR} && {program}")


def commands(options: TpuVmOptions, action: str, program_args: Sequence[str]) -> list[str]:
    """The exact shell lines of `action`, in order."""
    if action == "run":
        lines = [create_or_reuse(options)]
        if options.code == "copy":
            lines += copy_code(options)
        lines.append(run_program(options, program_args))
        if options.delete_after:
            lines.append(shlex.join(_gcloud(options, "delete", "--quiet")))
        return lines
    if action == "stop":
        return [_on_all_workers(options, f"pkill -TERM -f {shlex.quote('-m ' + options.program)} || true")]
    if action == "delete":
        return [shlex.join(_gcloud(options, "delete", "--quiet"))]
    raise ValueError(f"Unknown action {action!r}; valid: {', '.join(ACTIONS)}.")


def define_flags() -> None:
    flags.DEFINE_string("name", None, "TPU VM name.")
    flags.DEFINE_string("zone", None, "Zone of the TPU VM, e.g. us-central2-b.")
    flags.DEFINE_string("accelerator_type", "v4-8", "TPU type and size, e.g. v4-32, v5litepod-16.")
    flags.DEFINE_string("version", "tpu-ubuntu2204-base", "TPU VM software version (runtime image).")
    flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's).")
    flags.DEFINE_bool("spot", False, "Create the TPU VM as a Spot VM (preemptible; runs resume from checkpoints).")
    flags.DEFINE_enum("code", "copy", CODE_MODES, "copy: ship and install the committed code; installed: as is.")
    flags.DEFINE_enum("action", "run", ACTIONS, "run, stop (SIGTERM the program on all workers) or delete.")
    flags.DEFINE_bool("delete_after", False, "Delete the TPU VM when the run ends.")


def options_from_flags() -> TpuVmOptions:
    f = flags.FLAGS
    for required in ("name", "zone"):
        if not f[required].value:
            raise app.UsageError(f"--{required} is required.")
    return TpuVmOptions(
        name=f.name, zone=f.zone, accelerator_type=f.accelerator_type, version=f.version, project=f.project,
        spot=f.spot, code=f.code, program=f.program, delete_after=f.delete_after,
    )  # fmt: skip


def main(argv: Sequence[str]) -> int:
    lines = commands(options_from_flags(), flags.FLAGS.action, argv[1:])
    return common.run_shell_lines(lines, flags.FLAGS.dry_run)


if __name__ == "__main__":
    common.define_flags()
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
