"""Nothing lost: a diverged run stops before it saves, a corrupt newest checkpoint falls back to the one
before (moved aside, not deleted), another model's workdir is refused by name, a locked workdir is refused,
and the metric writer survives logging and evaluating every step."""

import glob
import logging
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from train_helpers import build_recipe, tiny_config

from titok_jax import checkpoint, recipes
from titok_jax import sharding as sh
from titok_jax.train import guard, loop, workdir_lock
from titok_jax.train.state import create_train_state


def _steps(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _restore(config, workdir, step):
    recipe, _ = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    abstract, _, _ = create_train_state(recipe, config, mesh)
    with checkpoint.make_manager(workdir, 1, 10) as manager, jax.set_mesh(mesh):
        return checkpoint.restore(manager, abstract, None, step)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of 4 steps saved at 1 (orbax saves the first step), 2 and 4, and its config."""
    config = tiny_config(total_steps=4, checkpoint_every=2)
    workdir = str(tmp_path_factory.mktemp("trained"))
    recipes.train(config, workdir)
    assert _steps(workdir) == [1, 2, 4]
    return config, workdir


def test_a_diverged_run_stops_at_its_first_non_finite_step_and_saves_nothing_of_it(trained, tmp_path):
    config, source = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    # Resume the good run at an absurd learning rate: the first step's update takes the weights to ~1e30,
    # the next forward pass overflows. Checkpoints every step, so any saved state past 4 would be visible.
    diverging = tiny_config(total_steps=12, checkpoint_every=1, log_every=4, **{"optimizer.learning_rate": 1e30})
    with pytest.raises(guard.NonFiniteError) as raised:
        recipes.train(diverging, workdir)
    message = str(raised.value)
    print(message)
    bad_step = int(message.split(" at step ")[1].split(";")[0])
    assert 5 <= bad_step <= 8
    assert "loss is not finite" in message or "grad_norm is not finite" in message
    last_good = max(_steps(workdir))
    assert f"the last good checkpoint (all finite) is step {last_good} in {workdir}/checkpoints" in message
    assert last_good < bad_step  # no state at or past the first non-finite step was written
    state = _restore(config, workdir, last_good)
    assert guard.all_finite({"params": state.params, "ema_params": state.ema_params, "opt": state.opt_state})
    assert not os.path.exists(os.path.join(workdir, "lock"))  # the lock is released on the way out


def _truncate_largest_data_file(step_dir):
    path = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))


def _flip_bits_in_the_data_files(step_dir):
    # Every data file: which file holds which (compressed) chunk depends on the writer's threads, and a flip
    # inside a chunk that still decodes gives finite garbage that no reader can tell from weights.
    for path in glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")):
        data = bytearray(open(path, "rb").read())
        for i in range(len(data) // 4, len(data) // 2, 997):
            data[i] ^= 0xFF
        with open(path, "wb") as f:
            f.write(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate_largest_data_file, _garbage_metadata, _flip_bits_in_the_data_files])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(trained, tmp_path, caplog, corrupt):
    config, source = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    corrupt(os.path.join(workdir, "checkpoints", "4"))
    with caplog.at_level(logging.INFO):
        recipes.train(tiny_config(total_steps=6, checkpoint_every=2), workdir)
    assert "Checkpoint step 4 is unreadable" in caplog.text and "trying the one before" in caplog.text
    assert "Resumed from checkpoint step 2" in caplog.text
    assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", "4"))  # kept aside, not deleted
    assert _steps(workdir) == [2, 4, 6]  # 4 written again by the resumed run (keep 3: 1 rotated out)
    # Resumed from step 2, the run is where the uncorrupted run was at step 4.
    chex.assert_trees_all_equal(
        jax.device_get(_restore(config, workdir, 4).params), jax.device_get(_restore(config, source, 4).params)
    )


def test_a_newest_checkpoint_that_reads_back_non_finite_falls_back(trained, tmp_path, caplog):
    """Flipped bits that still decode (the compressed chunks of the test above do not) give NaN weights."""
    config, source = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    state = _restore(config, workdir, 4)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    poisoned = state.replace(ema_params=jax.tree.map(lambda x: x * np.nan, state.ema_params))
    with checkpoint.make_manager(workdir, 1, 10) as manager:
        checkpoint.save(manager, 4, poisoned, None, force=True)
    with caplog.at_level(logging.INFO):
        recipes.train(tiny_config(total_steps=4, checkpoint_every=2), workdir)
    assert "Checkpoint step 4 is unreadable (non-finite parameters)" in caplog.text
    assert "Resumed from checkpoint step 2" in caplog.text


def test_another_models_workdir_is_refused_with_the_config_differences(trained):
    _, workdir = trained
    wider = tiny_config(total_steps=6, **{"model.decoder_width": 96})
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(ValueError, match="holds another model's checkpoint") as raised:
        recipes.train(wider, workdir)
    message = str(raised.value)
    assert "model.decoder_width: 64 -> 96" in message and "expected (96" in message
    assert "Resume with that run's config, or choose another --workdir" in message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # nothing moved or written


def test_a_locked_workdir_is_refused_before_anything_is_written(trained, tmp_path):
    _, source = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    with workdir_lock.hold(workdir):
        with pytest.raises(workdir_lock.WorkdirLocked, match="is in use by another run"):
            recipes.train(tiny_config(total_steps=6, checkpoint_every=2), workdir)
    assert _steps(workdir) == [1, 2, 4]


def test_logging_and_evaluating_every_step_runs_200_steps(tmp_path):
    """The loop hands the asynchronous metric writer its own copies: a shared dict changed at evaluation
    steps used to fail at random steps (dictionary changed size during iteration)."""
    config = tiny_config(total_steps=200, log_every=1, image_every=1, checkpoint_every=100)
    metrics = recipes.train(config, str(tmp_path))
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["eval/ema_reconstruction_mse"])
    assert _steps(str(tmp_path)) == [1, 100, 200]


def test_the_in_loop_held_out_mse_leaves_out_padding(tmp_path):
    """5 held-out images in a batch of 8: the 3 black padding images must not enter eval/*_mse."""
    config = tiny_config(**{"data.eval_num_examples": 5})
    recipe, frozen = build_recipe(config)
    mesh = sh.make_mesh(**config.mesh)
    grid = recipes.lookup(config).make_data(config)[1]
    assert grid["mask"].tolist() == [True] * 5 + [False] * 3
    _, init, _ = create_train_state(recipe, config, mesh)
    with jax.set_mesh(mesh):
        state = init()
        scalars, _ = loop.evaluate(state, loop.global_batch(grid, mesh), frozen, recipe)
    real = grid["image"][:5]
    reconstructions = np.asarray(jax.jit(recipe.reconstruct)(jax.device_get(state.ema_params), real, frozen))
    expected = float(np.mean(np.square(reconstructions - real)))
    padded_mean = float(np.mean(np.square(np.asarray(jax.jit(recipe.reconstruct)(
        jax.device_get(state.ema_params), grid["image"], frozen)) - grid["image"])))  # fmt: skip
    print(f"held-out MSE over the 5 real images {expected:.5f}; over all 8 {padded_mean:.5f}")
    np.testing.assert_allclose(float(scalars["ema_reconstruction_mse"]), expected, rtol=1e-4)
    assert abs(padded_mean - expected) > 0.01 * expected  # the padding would have moved it


def test_a_finished_run_rerun_says_it_is_complete(trained, tmp_path, caplog):
    _, source = trained
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    with caplog.at_level(logging.INFO):
        summary = recipes.train(tiny_config(total_steps=4, checkpoint_every=2), workdir)
    assert summary == {"complete": True, "step": 4}
    assert f"{workdir} is complete at step 4 (config.total_steps=4): nothing to train" in caplog.text
    assert _steps(workdir) == [1, 2, 4]  # nothing written
    # The workdir keeps the parameter table and every command line that started the run.
    assert "encoder/transformer/block_0" in open(os.path.join(workdir, "parameters.txt")).read()
    assert len(open(os.path.join(workdir, "commands.txt")).read().splitlines()) == 2
