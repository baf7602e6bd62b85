"""Every recipe runs a few steps through the one driver loop (tiny shapes, 8 fake devices)."""

import jax
import numpy as np
import pytest
from train_helpers import build_recipe, tiny_config

from titok_jax import checkpoint, recipes
from titok_jax.train import loop
from titok_jax.train.state import create_train_state


def _final_state(config, workdir):
    recipe, _ = build_recipe(config)
    mesh = loop.sh.make_mesh(**config.mesh)
    abstract, _, _ = create_train_state(recipe, config, mesh)
    manager = checkpoint.make_manager(str(workdir), 1, 100)
    with jax.set_mesh(mesh):
        state = checkpoint.restore(manager, abstract, None)
    manager.close()
    return state


# tiny_vq crosses the GAN start step (two compiled steps); tiny_vae has the GAN from step 0 (one compile, for time).
@pytest.mark.parametrize("spec, start", [("single_stage:tiny_vq", 1), ("single_stage:tiny_vae", 0)])
def test_single_stage_with_gan(tmp_path, spec, start):
    config = tiny_config(spec, **{"discriminator.enabled": True, "losses.discriminator_start": start})
    metrics = recipes.train(config, str(tmp_path))
    assert np.isfinite(metrics["total_loss"])
    # The discriminator trained from step 1 on, its LeCam EMAs moved, the generator saw its loss.
    assert metrics["discriminator_loss"] > 0 and metrics["discriminator_factor"] > 0
    state = _final_state(config, tmp_path)
    assert float(state.lecam.real) != 0.0
    assert int(state.step) == 4
    if "vae" in spec:
        assert metrics["kl_loss"] > 0
    else:
        assert 0 < metrics["codebook_usage"] <= 1


def test_two_stage_stage1_then_stage2(tmp_path):
    stage1_dir, stage2_dir = tmp_path / "stage1", tmp_path / "stage2"
    config1 = tiny_config("two_stage:tiny,stage=1")
    metrics1 = recipes.train(config1, str(stage1_dir))
    # 64 random proxy codes: chance cross entropy is log(64) = 4.16
    assert 3.0 < metrics1["proxy_cross_entropy"] < 5.0
    config2 = tiny_config(
        "two_stage:tiny,stage=2",
        # GAN from step 0: one compiled step (the switch at the start step is tested by the single-stage GAN tests).
        **{"init_from": str(stage1_dir), "discriminator.enabled": True, "losses.discriminator_start": 0},
    )
    metrics2 = recipes.train(config2, str(stage2_dir))
    assert np.isfinite(metrics2["total_loss"]) and metrics2["discriminator_loss"] > 0

    stage1, stage2 = _final_state(config1, stage1_dir), _final_state(config2, stage2_dir)
    # Encoder, quantizer and latent tokens come from stage 1's EMA and stay frozen in stage 2.
    for key in ("encoder", "quantize", "latent_tokens"):
        chex_equal = jax.tree.map(np.array_equal, stage1.ema_params["params"][key], stage2.params["params"][key])
        assert all(jax.tree_util.tree_leaves(chex_equal)), key
    # The decoder trained on.
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b),
        stage1.ema_params["params"]["decoder"],
        stage2.params["params"]["decoder"],
    )
    assert any(jax.tree_util.tree_leaves(changed))


def test_stage2_without_stage1_checkpoint_fails_clearly(tmp_path):
    config = tiny_config("two_stage:tiny,stage=2", init_from=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"config.init_from=.*missing' does not exist"):
        recipes.train(config, str(tmp_path / "run"))


def test_stage1_without_teacher_weights_fails_before_compiling(tmp_path):
    config = tiny_config("two_stage:tiny,stage=1", **{"teacher.random_init": False})
    with pytest.raises(ValueError, match=r"set config\.teacher\.checkpoint"):
        recipes.train(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_perceptual_loss_without_weights_fails_before_compiling(tmp_path):
    config = tiny_config("single_stage:tiny_vq", **{"losses.perceptual_weight": 1.1})
    with pytest.raises(ValueError, match=r"needs the perceptual networks' weights: set config\.perceptual\.weights"):
        recipes.train(config, str(tmp_path))
    missing = tiny_config(
        "single_stage:tiny_vq",
        **{"losses.perceptual_weight": 1.1, "perceptual.weights": str(tmp_path / "p.safetensors")},
    )
    with pytest.raises(FileNotFoundError, match="convert"):
        recipes.train(missing, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
