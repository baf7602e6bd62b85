"""GAN discriminator against a PyTorch reference of the official one; loss functions against hand values."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from discriminator_convert import discriminator_params_from_torch, lecam_ema_from_torch
from discriminator_reference import Blur, TorchNLayerDiscriminator
from helpers import count_params, model_for

from titok_jax import losses
from titok_jax import sharding as sh
from titok_jax.models.discriminator import NLayerDiscriminator, adaptive_max_pool, blur_downsample
from titok_jax.recipes.tokenizer import Stage1Recipe

OFFICIAL_PARAM_COUNT = 1_909_889  # official NLayerDiscriminator() defaults, all parameters (no buffers)


def _torch_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _nhwc(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def reference() -> TorchNLayerDiscriminator:
    """torch default init (logits of order 0.5) with GroupNorm scales / biases moved off 1 / 0."""
    torch.manual_seed(0)
    module = TorchNLayerDiscriminator().eval()
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith("blocks.") and ".2." in name:
                param.add_(0.1 * torch.randn(param.shape))
    return module


def test_parameter_tree_count_and_logical_axes(reference):
    boxed = jax.eval_shape(NLayerDiscriminator().init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    ours = nn.meta.unbox(boxed)["params"]
    assert count_params(ours) == OFFICIAL_PARAM_COUNT
    assert sum(p.numel() for p in reference.parameters()) == OFFICIAL_PARAM_COUNT
    converted = discriminator_params_from_torch(_torch_state(reference))
    chex.assert_trees_all_equal_shapes(converted, ours)
    # Every param carries one logical name per axis, and they shard on the 8-device test mesh.
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(specs) == len(jax.tree.leaves(ours))
    assert all(len(spec) == leaf.ndim for spec, leaf in zip(specs, jax.tree.leaves(ours), strict=True))
    sh.logical_shardings(boxed, sh.make_mesh(data=2, fsdp=2, tensor=2))


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 160, 44)])
def test_logits_match_the_torch_reference(reference, shape):
    # 64 px: the pool replicates 8 -> 16 cells; 160 x 44: overlapping 20 -> 16 bins, odd blur padding (11 -> 6).
    images = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(images).numpy().transpose(0, 2, 3, 1)
    params = discriminator_params_from_torch(_torch_state(reference))
    logits = NLayerDiscriminator().apply({"params": params}, _nhwc(images))
    assert logits.shape == (shape[0], 16, 16, 1) and logits.dtype == jnp.float32
    assert np.abs(expected).max() > 0.1, "logits should not be trivially small"
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [32, 20, 16, 11, 6, 1])
def test_adaptive_max_pool_matches_torch(size):
    x = torch.randn(2, 5, size, size + 3, generator=torch.Generator().manual_seed(size))
    expected = F.adaptive_max_pool2d(x, (16, 16)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(jax.jit(adaptive_max_pool, static_argnums=1)(_nhwc(x), 16), expected)


def test_blur_downsample_matches_torch_at_even_and_odd_sizes():
    x = torch.randn(2, 4, 12, 9, generator=torch.Generator().manual_seed(0))
    expected = Blur()(x).numpy().transpose(0, 2, 3, 1)
    out = blur_downsample(_nhwc(x))
    assert out.shape == (2, 6, 5, 4)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


def test_init_follows_torch_defaults():
    init = jax.jit(NLayerDiscriminator().init)
    params = nn.meta.unbox(init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
    for name, fan_in in (("conv_in", 5 * 5 * 3), ("head_out", 5 * 5 * 512)):
        bound = 1 / math.sqrt(fan_in)
        for leaf in (params[name]["kernel"], params[name]["bias"]):
            assert 0.8 * bound < float(jnp.abs(leaf).max()) <= bound
    np.testing.assert_array_equal(params["stage_1"]["norm"]["scale"], 1.0)


def test_converter_reports_bad_state_dicts(reference):
    state = _torch_state(reference)
    broken = {k: v for k, v in state.items() if k != "blocks.1.0.bias"}
    broken["blocks.2.2.weight"] = np.zeros(7, np.float32)
    broken["blocks.9.0.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as error:
        discriminator_params_from_torch(broken)
    message = str(error.value)
    assert "missing keys: blocks.1.0.bias" in message
    assert "unexpected keys: blocks.9.0.weight" in message
    assert "blocks.2.2.weight: shape (7,), expected (512,)" in message
    with pytest.raises(ValueError, match="blur filter"):
        discriminator_params_from_torch(state, blur_kernel_size=3)
    with pytest.raises(ValueError, match=r"block_in\.0\.weight: shape"):
        discriminator_params_from_torch(state, hidden_channels=64)

    # A whole loss-module state dict: discriminator under a prefix, LeCam buffers beside it.
    module_state = {f"discriminator.{k}": v for k, v in state.items()}
    module_state.update(
        ema_real_logits_mean=np.array([0.25], np.float32),
        ema_fake_logits_mean=np.array([-0.5], np.float32),
        **{"perceptual_loss.imagenet_mean": np.zeros((1, 3, 1, 1), np.float32)},
    )
    converted = discriminator_params_from_torch(module_state, prefix="discriminator.")
    np.testing.assert_array_equal(converted["head_out"]["kernel"], state["to_logits.2.weight"].transpose(2, 3, 1, 0))
    ema = lecam_ema_from_torch(module_state)
    assert (float(ema.real), float(ema.fake)) == (0.25, -0.5)


# --- losses against hand-computed values ------------------------------------

REAL = jnp.array([2.0, 0.5, -1.0])  # mean 0.5
FAKE = jnp.array([-2.0, 0.0, 1.5])  # mean -1/6


def test_adversarial_terms():
    # relu(1 - real) = (0, .5, 2), relu(1 + fake) = (0, 1, 2.5): 0.5 * (2.5/3 + 3.5/3) = 1.
    np.testing.assert_allclose(losses.hinge_discriminator_loss(REAL, FAKE), 1.0, rtol=1e-6)
    np.testing.assert_allclose(losses.generator_adversarial_loss(FAKE), 1 / 6, rtol=1e-6)
    # relu(0.5 - 0.1)^2 + relu(0.2 + 1/6)^2
    np.testing.assert_allclose(losses.lecam_regularization(REAL, FAKE, 0.2, 0.1), 0.16 + (11 / 30) ** 2, rtol=1e-6)
    np.testing.assert_allclose(losses.lecam_regularization(REAL, FAKE, -1.0, 1.0), 0.0, atol=0)
    ema = losses.update_lecam_ema(losses.LeCamEma(jnp.float32(0.2), jnp.float32(0.1)), REAL, FAKE, decay=0.999)
    np.testing.assert_allclose(ema, (0.2 * 0.999 + 0.5e-3, 0.1 * 0.999 - 1e-3 / 6), rtol=1e-6)
    np.testing.assert_array_equal(losses.init_lecam_ema(), (0.0, 0.0))


def test_reconstruction_terms():
    # cell 1: uniform over 3 -> log 3; cell 2: p = 3/5 -> log 5/3; mean = log(5) / 2.
    logits = jnp.array([[[[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0]]]])
    codes = jnp.array([[[1, 1]]])
    np.testing.assert_allclose(losses.proxy_code_cross_entropy(logits, codes), math.log(5.0) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="codebook_size"):
        losses.proxy_code_cross_entropy(logits, codes[..., 0])
    x, y = jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 3.0]])
    np.testing.assert_allclose(losses.reconstruction_l2(x, y), 2.5)
    np.testing.assert_allclose(losses.kl_loss(jnp.array([1.0, 3.0, 2.0])), 2.0)
    np.testing.assert_allclose(losses.kl_loss(jnp.array([[1.0, 2.0], [3.0, 4.0]])), 5.0)  # sum / batch


def test_discriminator_factor_schedule_under_jit():
    factor = jax.jit(lambda step: losses.discriminator_factor(step, 20_000, 0.5))
    assert [float(factor(s)) for s in (0, 19_999, 20_000, 500_000)] == [0.0, 0.0, 0.5, 0.5]


QUANTIZER = {"quantizer_loss": 0.3, "commitment_loss": 0.06, "codebook_loss": 0.24}


def test_stage2_generator_weighting():
    weights = losses.TWO_STAGE_2_LOSS_WEIGHTS  # stage 2 is the VQ case of the single-stage objective
    loss = jax.jit(lambda step: losses.single_stage_generator_loss(0.5, 2.0, QUANTIZER, 4.0, step, weights, "vq"))
    total, metrics = loss(19_999)  # before the GAN starts: 0.5 + 0.1 * 2 (quantizer weight 0)
    np.testing.assert_allclose(total, 0.7, rtol=1e-6)
    assert float(metrics["gan_loss"]) == 0.0 and float(metrics["discriminator_factor"]) == 0.0
    total, metrics = loss(20_000)  # + 0.01 * 4
    np.testing.assert_allclose(total, 0.74, rtol=1e-6)
    np.testing.assert_allclose(metrics["weighted_gan_loss"], 0.04, rtol=1e-6)
    np.testing.assert_allclose(metrics["perceptual_loss"], 0.2, rtol=1e-6)
    assert float(metrics["quantizer_loss"]) == 0.0 and float(metrics["gan_loss"]) == 4.0
    # Stage 1 (Stage1Recipe.loss): proxy-code CE + quantizer_weight * quantizer loss.
    recipe = Stage1Recipe(model=model_for("titok_two_stage.py:tiny"), optimizer=None, learning_rate=None, seed=0)
    quantizer, _ = recipe.quantizer_terms({**QUANTIZER, "indices": jnp.zeros((1, 16), jnp.int32)})
    np.testing.assert_allclose(3.0 + quantizer, 3.3, rtol=1e-6)


def test_single_stage_generator_weighting():
    weights = losses.SINGLE_STAGE_LOSS_WEIGHTS
    total, _ = losses.single_stage_generator_loss(0.5, 2.0, QUANTIZER, 4.0, 200_000, weights, "vq")
    np.testing.assert_allclose(total, 0.5 + 2.2 + 0.3 + 0.4, rtol=1e-6)
    kl = {"kl": jnp.array([1e5, 3e5])}  # sum / batch = 2e5, x 1e-6 = 0.2
    total, metrics = losses.single_stage_generator_loss(0.5, 2.0, kl, 4.0, 200_000, weights, "vae")
    np.testing.assert_allclose(total, 0.5 + 2.2 + 0.2 + 0.4, rtol=1e-6)
    np.testing.assert_allclose(metrics["kl_loss"], 0.2, rtol=1e-6)
    halved = losses.LossWeights.from_config({**vars(weights), "logvar_init": math.log(2.0)})
    total, _ = losses.single_stage_generator_loss(0.5, 2.0, kl, None, 0, halved, "vae")
    np.testing.assert_allclose(total, 0.25 + 2.2 + 0.2, rtol=1e-6)


def test_discriminator_loss_gating_and_lecam_state():
    weights = losses.TWO_STAGE_2_LOSS_WEIGHTS
    ema = losses.LeCamEma(jnp.float32(0.2), jnp.float32(0.1))
    step_fn = jax.jit(lambda step, e: losses.discriminator_loss(REAL, FAKE, e, step, weights))
    loss, new_ema, metrics = step_fn(20_000, ema)
    np.testing.assert_allclose(loss, 1.0 + 0.001 * (0.16 + (11 / 30) ** 2), rtol=1e-6)
    np.testing.assert_allclose(new_ema, (0.2003, 0.1 * 0.999 - 1e-3 / 6), rtol=1e-6)
    np.testing.assert_allclose(metrics["logits_real"], 0.5, rtol=1e-6)
    loss, new_ema, _ = step_fn(19_999, ema)  # before the start: no loss, state untouched
    assert float(loss) == 0.0
    np.testing.assert_array_equal(new_ema, ema)


def test_loss_weights_from_config_errors():
    config = {**vars(losses.TWO_STAGE_2_LOSS_WEIGHTS), "reconstruction_loss": "l2", "perceptual_loss": "convnext_s"}
    assert losses.LossWeights.from_config(config) == losses.TWO_STAGE_2_LOSS_WEIGHTS
    with pytest.raises(ValueError, match="Unknown loss config keys"):
        losses.LossWeights.from_config({**config, "discriminator_wieght": 0.1})
    with pytest.raises(ValueError, match="missing"):
        losses.LossWeights.from_config({"reconstruction_weight": 1.0})
