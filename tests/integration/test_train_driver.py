"""Driver guarantees: sharded step equals single-device step, one trace, bit-identical resume after kill -9."""

import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import EXPERIMENTS
from jax.sharding import PartitionSpec as P
from train_helpers import build_recipe, tiny_config

from titok_jax import recipes
from titok_jax import sharding as sh
from titok_jax.convert import titok as convert_titok
from titok_jax.data import pipeline
from titok_jax.models.titok import titok_from_config
from titok_jax.train import loop
from titok_jax.train.state import create_train_state
from titok_jax.train.step import train_step


def _step_on(mesh, config, batch_np, num_steps=1):
    recipe, frozen = build_recipe(config)
    _, init, shardings = create_train_state(recipe, config, mesh)
    step = chex.assert_max_traces(n=1)(train_step)
    step_fn = jax.jit(
        lambda s, b, f: step(s, b, f, recipe=recipe, phase=True),
        in_shardings=(shardings, None, None),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    with jax.set_mesh(mesh):
        state = init()
        batch = loop.global_batch(batch_np, mesh)
        frozen = jax.device_put(frozen, sh.replicated(mesh))
        losses = []
        for _ in range(num_steps):
            state, metrics = step_fn(state, batch, frozen)
            losses.append(float(metrics["loss"]))
    chex.clear_trace_counter()
    return state, losses


def test_fsdp_data_mesh_matches_one_device():
    config = tiny_config("single_stage:tiny_vq", **{"discriminator.enabled": True, "losses.discriminator_start": 0})
    batch = next(pipeline.make_train_iterator(config.data, config.batch_size, seed=0))
    sharded_mesh = sh.make_mesh(data=2, fsdp=4, tensor=1)
    single_mesh = sh.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])

    sharded, sharded_losses = _step_on(sharded_mesh, config, batch, num_steps=3)  # 3 steps, traced once
    single, single_losses = _step_on(single_mesh, config, batch, num_steps=3)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-4)
    # Clustering VQ moves dead codes onto their arg-nearest batch latent: a discontinuous
    # choice that fp summation order can flip, so the codebook is compared on its used rows only.
    sharded_params, single_params = jax.device_get(sharded.params), jax.device_get(single.params)
    codebooks = [p["params"]["quantize"].pop("codebook") for p in (sharded_params, single_params)]
    chex.assert_trees_all_close(sharded_params, single_params, atol=2e-4)
    used = np.asarray(jax.device_get(single.codebook_usage_ema)) > 0.001
    assert used.sum() > 0
    np.testing.assert_allclose(codebooks[0][used], codebooks[1][used], atol=2e-4)

    # Params, their Adam moments and the discriminator are really sharded over fsdp.
    kernel = sharded.params["params"]["encoder"]["transformer"]["block_0"]["mlp"]["fc"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor") and kernel.addressable_shards[0].data.shape == (16, 256)
    adam_mu = sharded.opt_state[1][0].mu["params"]["encoder"]["transformer"]["block_0"]["mlp"]["fc"]["kernel"]
    assert adam_mu.sharding.spec == P("fsdp", "tensor") and adam_mu.addressable_shards[0].data.shape == (16, 256)
    conv = sharded.discriminator["params"]["params"]["stage_0"]["conv"]["kernel"]
    assert "fsdp" in conv.sharding.spec


def _run_main(workdir, *overrides):
    command = [
        sys.executable,
        "-m",
        "titok_jax.main",
        f"--workdir={workdir}",
        f"--config={EXPERIMENTS / 'titok_single_stage.py'}:tiny_vq",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.data.num_examples=256",
        "--config.data.eval_num_examples=16",
        "--config.total_steps=40",
        "--config.checkpoint_every=10",
        "--config.log_every=10",
        "--config.image_every=40",
        "--config.losses.discriminator_start=5",
        "--config.evaluation.every=0",
        *overrides,
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(command, cwd=EXPERIMENTS.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _final_params(workdir):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]


def _wait_for_checkpoint(process, workdir, step):
    """Returns as soon as checkpoint `step` is complete (orbax renames it into place)."""
    deadline = time.time() + 400
    while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _finish(process):
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-3000:]
    return err.decode()


def _assert_same_final_state(reference_dir, resumed_dir):
    (step_a, state_a), (step_b, state_b) = _final_params(reference_dir), _final_params(resumed_dir)
    assert step_a == step_b == 40
    for name in ("params", "ema_params", "opt_state", "discriminator", "lecam", "codebook_usage_ema"):
        chex.assert_trees_all_equal(state_a[name], state_b[name])
    # And training really moved the params (the comparison is not between two inits).
    assert not np.array_equal(
        state_a["params"]["params"]["decoder"]["ffn_pixels"]["kernel"],
        nn.meta.unbox(state_a["ema_params"])["params"]["decoder"]["ffn_pixels"]["kernel"],
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The weights the runs below fine-tune from (config.init_from): a tiny official-layout hub directory."""
    directory = str(tmp_path_factory.mktemp("source") / "hub")
    config = tiny_config("single_stage:tiny_vq")
    model = titok_from_config(config.model)
    boxed = jax.jit(model.init)(jax.random.PRNGKey(7), np.zeros((1, *model.image_shape), np.float32))
    convert_titok.save_hub_tokenizer(model, jax.device_get(nn.meta.unbox(boxed)), directory, allow_custom_sizes=True)
    return directory


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, source):
    """The workdir of the 40-step fine-tune below, uninterrupted (the reference of the resume tests)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    _finish(_run_main(workdir, f"--config.init_from={source}"))
    return workdir


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(uninterrupted, source, tmp_path):
    """Resume beats init_from: the rerun resumes the killed fine-tune (its source is gone by then)."""
    own_source, resumed_dir = str(tmp_path / "source"), str(tmp_path / "resumed")
    shutil.copytree(source, own_source)
    victim = _run_main(resumed_dir, f"--config.init_from={own_source}")
    _wait_for_checkpoint(victim, resumed_dir, 20)  # then kill it hard
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not os.path.isdir(os.path.join(resumed_dir, "checkpoints", "40")), "killed too late to test a resume"
    shutil.rmtree(own_source)
    err = _finish(_run_main(resumed_dir, f"--config.init_from={own_source}"))  # the same command again
    assert f"resuming from them; config.init_from={own_source} is not read" in err
    _assert_same_final_state(uninterrupted, resumed_dir)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_the_current_step_exits_0_and_the_rerun_is_bit_identical(
    uninterrupted, source, tmp_path, stop
):
    """A scheduler's SIGTERM or a Ctrl-C: the run finishes its step, saves it (off the save interval) and
    exits 0; the same command resumes there."""
    workdir = str(tmp_path / "run")
    victim = _run_main(workdir, f"--config.init_from={source}")
    _wait_for_checkpoint(victim, workdir, 20)
    victim.send_signal(stop)
    err = _finish(victim)
    stopped = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    assert 20 < stopped < 40, f"stopped at {stopped}: the signal came too late to test a resume"
    assert f"{stop.name} at step {stopped}: saved checkpoint {stopped}" in err
    assert not os.path.exists(os.path.join(workdir, "lock"))
    _finish(_run_main(workdir, f"--config.init_from={source}"))
    _assert_same_final_state(uninterrupted, workdir)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
    """Written on an fsdp=8 mesh, read back on data=2 x tensor=4: same values, new shardings."""
    from titok_jax import checkpoint

    config = tiny_config("single_stage:tiny_vq", **{"mesh.data": 1, "mesh.fsdp": 8, "total_steps": 2})
    recipes.train(config, str(tmp_path))
    recipe, _ = build_recipe(config)

    def restore_on(mesh):
        abstract, _, _ = create_train_state(recipe, config, mesh)
        with checkpoint.make_manager(str(tmp_path), 1, 10) as manager, jax.set_mesh(mesh):
            return checkpoint.restore(manager, abstract, None)

    written = restore_on(sh.make_mesh(data=1, fsdp=8, tensor=1))
    moved = restore_on(sh.make_mesh(data=2, fsdp=1, tensor=4))
    kernel = moved.params["params"]["encoder"]["transformer"]["block_0"]["mlp"]["fc"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor") and kernel.addressable_shards[0].data.shape == (64, 64)
    assert int(moved.step) == 2
    chex.assert_trees_all_equal(jax.device_get(written), jax.device_get(moved))
