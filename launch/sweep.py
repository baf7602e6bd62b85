r"""Expands an experiment file's sweep (`get_sweep(arg)`) into runs and launches each.

  python -m launch.sweep --config=experiments/titok_single_stage.py:tiny_vq --root=/tmp/sweeps \
      [--launcher=local|slurm|tpu_vm] [--dry_run] [launcher flags]

Every run's config is loaded and validated before anything is launched (a wrong key
or value stops the whole sweep). Runs get workdirs ROOT/EXPERIMENT_ARG/NAME named
after their swept values; `--dry_run` lists them with the exact commands. Launcher
flags are those of launch.local / launch.slurm / launch.tpu_vm (e.g. --nodes,
--name/--zone). A local sweep runs one run after another, each in one process
(--num_processes=1) or as a multi-process run; SLURM runs are submitted as one job
each; TPU runs go one after another on the same TPU VM.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from absl import app, flags

from launch import common, local, slurm, tpu_vm
from titok_jax import recipes, sweeps

LAUNCHERS = ("local", "slurm", "tpu_vm")


def _launch_local(args: list[str], dry_run: bool) -> int:
    options = local.options_from_flags()
    if options.num_processes == 1:  # a plain single-process run
        line = common.shell_line(common.program_command(options.program, args, options.python))
        return common.run_shell_lines([line], dry_run)
    if dry_run:
        print("\n".join(local.shell_lines(options, args)))
        return 0
    return local.run(options, args)


def _launch_tpu_vm(args: list[str], first: bool, last: bool, dry_run: bool) -> int:
    options = tpu_vm.options_from_flags()
    # The VM and the code are set up for the first run; the VM is deleted (if asked) after the last.
    lines = tpu_vm.commands(dataclasses.replace(options, delete_after=False), "run", args)
    if not first:
        lines = lines[-1:]
    if last and options.delete_after:
        lines += tpu_vm.commands(options, "delete", [])
    return common.run_shell_lines(lines, dry_run)


def launch(runs: Sequence[sweeps.Run], launcher: str, dry_run: bool) -> int:
    """Launches the runs in order; stops at the first that fails to launch (or, locally, fails)."""
    for index, run in enumerate(runs):
        print(f"# run {index + 1}/{len(runs)}: {run.name} -> {run.workdir}", flush=True)
        args = run.program_args()
        if launcher == "local":
            code = _launch_local(args, dry_run)
        elif launcher == "slurm":
            options = slurm.options_from_flags()
            code = slurm.submit(
                dataclasses.replace(options, job_name=f"{options.job_name}-{run.group}-{run.name}"), args, dry_run
            )
        else:
            code = _launch_tpu_vm(args, index == 0, index == len(runs) - 1, dry_run)
        if code:
            print(f"Run {run.name} failed (exit code {code}); the remaining runs were not launched.", file=sys.stderr)
            return code
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    runs = sweeps.expand(f.config, f.root, validate=recipes.validate)
    return launch(runs, f.launcher, f.dry_run)


if __name__ == "__main__":
    flags.DEFINE_string("config", None, "Experiment file[:arg] that declares get_sweep(arg).", required=True)
    flags.DEFINE_string("root", None, "Directory under which every run gets its workdir.", required=True)
    flags.DEFINE_enum("launcher", "local", LAUNCHERS, "How each run is started.")
    common.define_flags()
    local.define_flags()
    slurm.define_flags()
    tpu_vm.define_flags()
    flags.FLAGS.set_default("num_processes", 1)
    app.run(lambda argv: sys.exit(main(argv)))
