"""Launchers (exact command lines of their dry runs) and sweep expansion."""

import os
import subprocess
import sys

import helpers
import pytest
from helpers import SINGLE_STAGE

from launch import common, local, slurm, tpu_vm
from titok_jax import recipes, sweeps

REPO = str(helpers.REPO)
ARGS = ["--config=experiments/titok_two_stage.py:l32", "--workdir=gs://bucket/l32 stage1"]


def test_local_commands_give_each_process_its_devices_and_id():
    options = local.LocalOptions(num_processes=2, devices_per_process=4, coordinator_port=9000)
    assert local.shell_lines(options, ["--workdir=/tmp/w"]) == [
        "JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=4 python -m titok_jax.main --workdir=/tmp/w "
        "--coordinator_address=127.0.0.1:9000 --num_processes=2 --process_id=0 --distributed_timeout_s=120",
        "JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=4 python -m titok_jax.main --workdir=/tmp/w "
        "--coordinator_address=127.0.0.1:9000 --num_processes=2 --process_id=1 --distributed_timeout_s=120",
    ]
    with pytest.raises(ValueError, match="num_processes=0"):
        local.commands(local.LocalOptions(num_processes=0), [])


def test_tpu_vm_run_dry_run_is_the_exact_gcloud_sequence():
    options = tpu_vm.TpuVmOptions(
        name="titok-v4", zone="us-central2-b", accelerator_type="v4-32", spot=True, delete_after=True
    )
    archive = "/tmp/titok_jax_code.tar.gz"
    assert tpu_vm.commands(options, "run", ARGS) == [
        "gcloud compute tpus tpu-vm describe titok-v4 '--format=value(state)' --zone=us-central2-b >/dev/null 2>&1 "
        "|| gcloud compute tpus tpu-vm create titok-v4 --accelerator-type=v4-32 --version=tpu-ubuntu2204-base "
        "--spot --zone=us-central2-b",
        f"git -C {REPO} archive --format=tar.gz -o {archive} HEAD",
        f"gcloud compute tpus tpu-vm scp {archive} 'titok-v4:~/titok_jax_code.tar.gz' --worker=all "
        "--zone=us-central2-b",
        "gcloud compute tpus tpu-vm ssh titok-v4 --worker=all '--command=rm -rf ~/titok_jax && mkdir -p ~/titok_jax "
        "&& tar -xzf ~/titok_jax_code.tar.gz -C ~/titok_jax && pip install -q -r ~/titok_jax/requirements.txt "
        "-e ~/titok_jax '\"'\"'jax[tpu]==0.10.2'\"'\"'' --zone=us-central2-b",
        # The same command on every worker; jax.distributed finds the pod's topology itself (--distributed=on).
        "gcloud compute tpus tpu-vm ssh titok-v4 --worker=all '--command=cd ~/titok_jax && python3 -m titok_jax.main "
        "--config=experiments/titok_two_stage.py:l32 '\"'\"'--workdir=gs://bucket/l32 stage1'\"'\"' "
        "--distributed=on' --zone=us-central2-b",
        "gcloud compute tpus tpu-vm delete titok-v4 --quiet --zone=us-central2-b",
    ]
    installed = tpu_vm.TpuVmOptions(name="t", zone="z", code="installed", project="p")
    assert tpu_vm.commands(installed, "run", []) == [
        "gcloud compute tpus tpu-vm describe t '--format=value(state)' --zone=z --project=p >/dev/null 2>&1 || "
        "gcloud compute tpus tpu-vm create t --accelerator-type=v4-8 --version=tpu-ubuntu2204-base --zone=z "
        "--project=p",
        "gcloud compute tpus tpu-vm ssh t --worker=all '--command=cd ~/titok_jax && python3 -m titok_jax.main "
        "--distributed=on' --zone=z --project=p",
    ]
    assert tpu_vm.commands(installed, "stop", []) == [
        "gcloud compute tpus tpu-vm ssh t --worker=all "
        "'--command=pkill -TERM -f '\"'\"'-m titok_jax.main'\"'\"' || true' --zone=z --project=p"
    ]


def test_slurm_script_sets_up_the_coordinator_and_per_task_ids():
    options = slurm.SlurmOptions(job_name="l32", nodes=4, gpus_per_node=8, time="48:00:00", partition="gpu")
    assert slurm.script(options, ARGS) == "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=l32",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --time=48:00:00",
        "#SBATCH --output=slurm_logs/%x-%j.out",
        "#SBATCH --signal=TERM@300",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "set -euo pipefail",
        "# Process 0 (the first node of the allocation) hosts the JAX coordinator.",
        'COORDINATOR_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'export COORDINATOR_ADDRESS="$COORDINATOR_HOST:8476"',
        "export PYTHONUNBUFFERED=1",
        "srun --kill-on-bad-exit=1 bash -c 'python -m titok_jax.main --config=experiments/titok_two_stage.py:l32 "
        "'\"'\"'--workdir=gs://bucket/l32 stage1'\"'\"' --coordinator_address=$COORDINATOR_ADDRESS "
        "--num_processes=$SLURM_NTASKS --process_id=$SLURM_PROCID'",
    ]) + "\n"  # fmt: skip


def test_slurm_script_runs_each_task_with_its_own_id(tmp_path):
    """The srun line, run by bash with SLURM's variables as one task sees them, gives that task's flags."""
    script = slurm.script(slurm.SlurmOptions(), ["--workdir=/w x"])
    task = script.strip().splitlines()[-1].removeprefix("srun --kill-on-bad-exit=1 ")
    env = {**os.environ, "COORDINATOR_ADDRESS": "node7:8476", "SLURM_NTASKS": "4", "SLURM_PROCID": "3"}
    printed = subprocess.run(
        ["bash", "-c", task.replace("bash -c '", "bash -c 'printf \"%s\\n\" ", 1)], env=env, capture_output=True,
        text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert printed == [
        "python", "-m", "titok_jax.main", "--workdir=/w x", "--coordinator_address=node7:8476",
        "--num_processes=4", "--process_id=3",
    ]  # fmt: skip


def test_launcher_cli_dry_runs_print_the_commands(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run(
        [sys.executable, "-m", "launch.local", "--dry_run", "--num_processes=2", "--coordinator_port=9100", "--",
         "--workdir=/tmp/w"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines() == [
        f"JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=2 {sys.executable} -m titok_jax.main --workdir=/tmp/w "
        f"--coordinator_address=127.0.0.1:9100 --num_processes=2 --process_id={i} --distributed_timeout_s=120"
        for i in range(2)
    ]
    out = subprocess.run(
        [sys.executable, "-m", "launch.slurm", "--dry_run", f"--slurm_dir={tmp_path}", "--nodes=2", "--", "--workdir=/w"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.startswith(f"# {tmp_path}/titok_jax.sbatch\n#!/bin/bash\n")
    assert out.endswith(f"sbatch {tmp_path}/titok_jax.sbatch\n")
    assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_sweep_of_the_example_experiment_expands_to_named_runs(tmp_path):
    runs = sweeps.expand(f"{SINGLE_STAGE}:tiny_vq", str(tmp_path))
    group = {"tiny_vq": tmp_path / "titok_single_stage_tiny_vq", "tiny_vae": tmp_path / "titok_single_stage_tiny_vae"}
    assert [(r.config.variant, r.workdir) for r in runs] == [
        ("tiny_vq", str(group["tiny_vq"] / "learning_rate=0.001")),
        ("tiny_vq", str(group["tiny_vq"] / "learning_rate=0.003")),
        ("tiny_vae", str(group["tiny_vae"] / "learning_rate=0.001")),
        ("tiny_vae", str(group["tiny_vae"] / "learning_rate=0.003")),
        ("tiny_vq", str(group["tiny_vq"] / "seed=1,batch_size=16")),
        ("tiny_vq", str(group["tiny_vq"] / "seed=2,batch_size=64")),
    ]
    assert [r.config.optimizer.learning_rate for r in runs[:4]] == [1e-3, 3e-3, 1e-3, 3e-3]
    assert [(r.config.seed, r.config.batch_size) for r in runs[4:]] == [(1, 16), (2, 64)]
    assert runs[2].program_args() == [
        f"--config={SINGLE_STAGE}:tiny_vae",
        f"--workdir={group['tiny_vae'] / 'learning_rate=0.001'}",
        "--config.optimizer.learning_rate=0.001",
    ]


def test_sweep_combinators_and_bad_sweeps(tmp_path):
    assert sweeps.product(a=[1, 2], b=["x", "y"]) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"},
    ]  # fmt: skip
    assert sweeps.zipped(a=[1, 2], b=["x", "y"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ValueError, match="equal lengths"):
        sweeps.zipped(a=[1, 2], b=[1])
    spec = f"{SINGLE_STAGE}:tiny_vq"
    # Two keys with the same last component keep their full paths in the run names.
    runs = sweeps.expand(spec, str(tmp_path), [{"optimizer.learning_rate": 1e-3, "ema.decay": 0.9}])
    assert os.path.basename(runs[0].workdir) == "learning_rate=0.001,decay=0.9"
    runs = sweeps.expand(spec, str(tmp_path), [{"optimizer.weight_decay": 0.0, "losses.quantizer_weight": 0.0}])
    assert os.path.basename(runs[0].workdir) == "weight_decay=0.0,quantizer_weight=0.0"
    with pytest.raises(KeyError, match=r"'optimizer\.learning_rat'.*no field 'learning_rat'"):
        sweeps.expand(spec, str(tmp_path), [{"optimizer.learning_rat": 1e-3}])
    with pytest.raises(ValueError, match="repeated runs"):
        sweeps.expand(spec, str(tmp_path), [{"seed": 1}, {"seed": 1}])
    with pytest.raises(ValueError, match="mesh"):  # every run's config is validated before any launch
        sweeps.expand(spec, str(tmp_path), [{"mesh.data": 0}], validate=recipes.validate)
    with pytest.raises(ValueError, match="declares no sweep"):
        sweeps.load_sweep(f"{os.path.dirname(SINGLE_STAGE)}/titok_two_stage.py:tiny")


def test_sweep_cli_dry_run_lists_runs_with_launch_commands(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "launch.sweep", f"--config={SINGLE_STAGE}:tiny_vq", f"--root={tmp_path}"]
    out = subprocess.run([*command, "--dry_run"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    runs = sweeps.expand(f"{SINGLE_STAGE}:tiny_vq", str(tmp_path))
    assert lines[0::2] == [f"# run {i + 1}/6: {r.name} -> {r.workdir}" for i, r in enumerate(runs)]
    assert lines[1::2] == [
        common.shell_line(common.program_command("titok_jax.main", r.program_args(), sys.executable)) for r in runs
    ]
    out = subprocess.run(
        [*command, "--dry_run", "--launcher=tpu_vm", "--name=t", "--zone=z", "--code=installed"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    tpu_lines = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    options = tpu_vm.TpuVmOptions(name="t", zone="z", code="installed")
    assert tpu_lines == [
        tpu_vm.create_or_reuse(options),  # once, then every run on the same VM
        *(tpu_vm.run_program(options, r.program_args()) for r in runs),
    ]
    out = subprocess.run(
        [*command, "--dry_run", "--launcher=slurm", "--nodes=2", f"--slurm_dir={tmp_path / 'slurm'}"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    submitted = [line for line in out.stdout.splitlines() if line.startswith("sbatch ")]
    assert submitted == [f"sbatch {tmp_path / 'slurm'}/titok_jax-{r.group}-{r.name}.sbatch" for r in runs]
    assert len(set(submitted)) == 6  # one job (and script) per run, none overwritten
    assert out.stdout.count("#SBATCH --nodes=2") == 6
    assert not os.listdir(tmp_path)
