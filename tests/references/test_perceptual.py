"""Perceptual-loss networks against their PyTorch references (lpips, torchvision), and the weight converter.

The references get random weights (nothing is downloaded) except LPIPS' linear
layers, which the `lpips` package ships: those are the real, official weights.
Every bias and norm parameter is randomised too, so each converted tensor matters.
"""

import os
import re
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import EXPERIMENTS, count_params
from safetensors.numpy import save_file

from titok_jax.convert import perceptual as convert
from titok_jax.models import perceptual as pm

REPO = EXPERIMENTS.parent
LPIPS_LIN_FILE = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
WEIGHTS = pm.PerceptualWeights.from_name("lpips-convnext_s-1.0-0.1")


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


def _images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def torch_lpips():
    torch.manual_seed(0)
    # pnet_rand: random VGG trunk, no download; pretrained: the shipped v0.1 linear layers.
    with warnings.catch_warnings():  # lpips still passes torchvision the deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    with torch.no_grad():
        for name, param in model.net.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def torch_convnext():
    torch.manual_seed(1)
    model = torchvision.models.convnext_small(weights=None).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_scale"):
                param.uniform_(0.1, 0.5)  # the 1e-6 default would hide the blocks
            elif param.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory, torch_lpips, torch_convnext):
    """The reference weights written in the official layouts: vgg16 .pth, LPIPS' vgg.pth, convnext .safetensors."""
    root = tmp_path_factory.mktemp("torch_weights")
    # lpips keeps torchvision's `features` indices inside its slices: net.slice2.5.weight is features.5.weight.
    vgg = {
        re.sub(r"^net\.slice\d\.", "features.", key): value
        for key, value in torch_lpips.state_dict().items()
        if key.startswith("net.")
    }
    # A torchvision vgg16 file also holds the classifier, which LPIPS does not use.
    vgg["classifier.6.bias"] = torch.zeros(1000)
    torch.save(vgg, root / "vgg16.pth")
    convnext = {key: value.numpy() for key, value in torch_convnext.state_dict().items()}
    save_file(convnext, str(root / "convnext_small.safetensors"))
    return {
        "lpips_vgg": str(root / "vgg16.pth"),
        "lpips_lin": LPIPS_LIN_FILE,
        "convnext": str(root / "convnext_small.safetensors"),
    }


@pytest.fixture(scope="module")
def params(tmp_path_factory, torch_files):
    output = tmp_path_factory.mktemp("converted")
    path = convert.convert_files(str(output), **torch_files)
    assert path == str(output / "perceptual.safetensors")
    return convert.load_perceptual_params(str(output), networks=("lpips", "convnext"))


def test_lpips_features_distance_and_gradient_match_lpips(torch_lpips, params):
    images, targets = _images(0, (3, 64, 64, 3)), _images(1, (3, 64, 64, 3))
    with torch.no_grad():
        ref_taps = torch_lpips.net(torch_lpips.scaling_layer(_nchw(images) * 2 - 1))
        ref_distance = torch_lpips(_nchw(images), _nchw(targets), normalize=True).flatten().numpy()

    @jax.jit
    def run(params, images, targets):
        taps = pm.VGG16Features().apply({"params": params["vgg"]}, pm.lpips_scale(images))
        grad = jax.grad(pm.lpips_loss, argnums=1)(params, images, targets)
        return taps, pm.lpips_distance(params, images, targets), pm.lpips_loss(params, images, targets), grad

    taps, distance, loss, grad = run(params["lpips"], images, targets)
    for tap, ref_tap in zip(taps, ref_taps, strict=True):
        np.testing.assert_allclose(tap, _nhwc(ref_tap), rtol=1e-4, atol=1e-4 * float(ref_tap.abs().max()))
    np.testing.assert_allclose(distance, ref_distance, rtol=1e-4, atol=0)
    np.testing.assert_allclose(loss, ref_distance.mean(), rtol=1e-4, atol=0)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_unit_normalize_has_a_finite_gradient_at_zero():
    # Every ReLU off at a pixel gives an all-zero feature vector; its norm must not poison the gradient.
    grad = jax.grad(lambda x: jnp.sum(pm.unit_normalize(x)))(jnp.zeros((2, 4)))
    assert np.all(np.isfinite(grad))


def test_convnext_logits_and_combined_loss_match_torch(torch_lpips, torch_convnext, params):
    # One pair at the training resolution: ConvNeXt sees them resized 256 -> 224.
    images, targets = _images(2, (1, 256, 256, 3)), _images(3, (1, 256, 256, 3))
    mean = torch.tensor(pm.IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(pm.IMAGENET_STD)[None, :, None, None]
    both = _nchw(np.concatenate([images, targets]))
    with torch.no_grad():
        resized = F.interpolate(both, size=224, mode="bilinear", align_corners=False, antialias=True)
        ref_logits = torch_convnext((resized - mean) / std).numpy()
        ref_lpips = torch_lpips(both[:1], both[1:], normalize=True).mean().item()
    ref_convnext = float(np.mean((ref_logits[0] - ref_logits[1]) ** 2))
    ref_total = (1.0 * ref_lpips + 0.1 * ref_convnext) / 1.1

    @jax.jit
    def run(params, images, targets):
        logits = pm.convnext_logits(params["convnext"], jnp.concatenate([images, targets]))
        return logits, pm.perceptual_loss_terms(params, images, targets, WEIGHTS)

    logits, terms = run(params, images, targets)
    assert logits.shape == (2, 1000)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4 * np.abs(ref_logits).max())
    np.testing.assert_allclose(terms["convnext"], ref_convnext, rtol=1e-4)
    np.testing.assert_allclose(terms["lpips"], ref_lpips, rtol=1e-4)
    np.testing.assert_allclose(terms["perceptual"], ref_total, rtol=1e-4)
    assert terms["convnext"] > 1e-3 and terms["lpips"] > 1e-3, "both terms must be far from zero to mean anything"


@pytest.mark.parametrize("shape", [(256, 256), (300, 200), (224, 224), (64, 64)])
def test_resize_matches_torch_antialiased_bilinear(shape):
    images = _images(4, (2, *shape, 3))
    ref = F.interpolate(_nchw(images), size=224, mode="bilinear", align_corners=False, antialias=True)
    # Both compute the sampling positions in float32; near pixel 256 that alone moves a value by ~1e-5.
    np.testing.assert_allclose(pm.resize_for_convnext(jnp.asarray(images)), _nhwc(ref), atol=3e-5, rtol=0)


def test_param_trees_counts_and_logical_axes(torch_lpips, torch_convnext, params):
    image = jnp.zeros((1, 32, 32, 3))
    for network, module, inputs in (
        ("lpips", pm.LPIPS(), (image, image)),
        ("convnext", pm.ConvNeXtSmall(), (image,)),
    ):
        boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves), network
        assert jax.tree.structure(nn.meta.unbox(boxed)) == jax.tree.structure(params[network])
    torch_count = sum(p.numel() for p in torch_convnext.parameters())
    assert count_params(params["convnext"]) == torch_count == 50_223_688
    assert count_params(params["lpips"]["vgg"]) == 14_714_688  # torchvision vgg16.features
    assert count_params(params["lpips"]) - 14_714_688 == sum(pm.LPIPS_TAP_CHANNELS)


def test_weights_from_official_names():
    assert pm.PerceptualWeights.from_name("lpips-convnext_s-1.0-0.1") == pm.PerceptualWeights(lpips=1.0, convnext=0.1)
    assert pm.PerceptualWeights.from_name("convnext_s") == pm.PerceptualWeights(convnext=1.0)
    assert pm.PerceptualWeights.from_name("lpips") == pm.PerceptualWeights(lpips=1.0)
    with pytest.raises(ValueError, match="Unknown perceptual loss 'vgg'"):
        pm.PerceptualWeights.from_name("vgg")
    with pytest.raises(ValueError, match="lpips-convnext_s-<lpips weight>-<convnext weight>"):
        pm.PerceptualWeights.from_name("lpips-convnext_s")


def test_losses_reject_bad_images(params):
    good = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"got \(1, 3, 32, 32\)\. The input looks channels-first"):
        pm.lpips_loss(params["lpips"], jnp.zeros((1, 3, 32, 32)), jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="got dtype uint8"):
        pm.convnext_logit_loss(params["convnext"], good.astype(jnp.uint8), good.astype(jnp.uint8))
    with pytest.raises(ValueError, match="same shape"):
        pm.lpips_loss(params["lpips"], good, jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="needs 'lpips' weights"):
        pm.perceptual_loss({"convnext": params["convnext"]}, good, good, WEIGHTS)


# ---------------------------------------------------------------------------- converter errors


@pytest.fixture(scope="module")
def convnext_state(torch_files):
    return convert.read_state_dict(torch_files["convnext"])


def test_convert_names_a_missing_key_and_its_shape(convnext_state):
    state = dict(convnext_state)
    del state["features.5.26.block.3.weight"]
    with pytest.raises(
        ValueError, match=r"missing key 'features\.5\.26\.block\.3\.weight' \(expected shape \(1536, 384\)\)"
    ):
        convert.convert_convnext_small(state)


def test_convert_names_a_wrong_shape(convnext_state):
    state = {**convnext_state, "classifier.2.weight": np.zeros((10, 768), np.float32)}
    with pytest.raises(
        ValueError, match=r"key 'classifier\.2\.weight' has shape \(10, 768\), expected shape \(1000, 768\)"
    ):
        convert.convert_convnext_small(state)


def test_convert_names_an_unexpected_key(convnext_state):
    state = {**convnext_state, "features.7.3.layer_scale": np.zeros((768, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected key 'features\.7\.3\.layer_scale' \(shape \(768, 1, 1\)\)"):
        convert.convert_convnext_small(state)


def test_convert_rejects_the_wrong_file(tmp_path, torch_files):
    # ConvNeXt weights passed as the VGG trunk.
    with pytest.raises(
        ValueError,
        match=r"(?s)Not a torchvision vgg16 .*missing key 'features\.0\.weight' \(expected shape \(64, 3, 3, 3\)\)",
    ):
        convert.convert_files(str(tmp_path), lpips_vgg=torch_files["convnext"], lpips_lin=LPIPS_LIN_FILE)
    # The VGG trunk passed as LPIPS' linear layers.
    with pytest.raises(ValueError, match=r"missing key 'lin0\.model\.1\.weight' \(expected shape \(1, 64, 1, 1\)\)"):
        convert.convert_files(str(tmp_path), lpips_vgg=torch_files["lpips_vgg"], lpips_lin=torch_files["lpips_vgg"])
    for name, message in (
        ("junk.pth", "is not a readable PyTorch state dict"),
        ("junk.safetensors", "is not a readable .safetensors file"),
        ("junk.txt", "expected a .safetensors file or a torch state dict"),
    ):
        (tmp_path / name).write_bytes(b"not a checkpoint")
        with pytest.raises(ValueError, match=re.escape(message)):
            convert.read_state_dict(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        convert.read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="needs both --lpips_vgg"):
        convert.convert_files(str(tmp_path), lpips_vgg=torch_files["lpips_vgg"])


def test_torch_files_need_torch_with_a_clear_message(monkeypatch, torch_files):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"needs torch: `pip install .titok_jax\[torch\].`.*\.safetensors"):
        convert.read_state_dict(torch_files["lpips_vgg"])
    assert convert.read_state_dict(torch_files["convnext"])  # .safetensors needs no torch


def test_loader_explains_missing_and_bad_files(tmp_path, params):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)not found at .*python -m titok_jax\.convert\.perceptual --lpips_vgg="
    ):
        convert.load_perceptual_params(tmp_path / "perceptual.safetensors")
    with pytest.raises(FileNotFoundError, match=r"No perceptual\.safetensors or perceptual\.msgpack in"):
        convert.load_perceptual_params(tmp_path)
    convert.save_perceptual_params({"convnext": params["convnext"]}, tmp_path / "convnext_only.msgpack")
    assert set(convert.load_perceptual_params(tmp_path / "convnext_only.msgpack")) == {"convnext"}
    with pytest.raises(ValueError, match="holds \\['convnext'\\] but 'lpips' is needed"):
        convert.load_perceptual_params(tmp_path / "convnext_only.msgpack", networks=("lpips",))
    tampered = {"convnext": {**params["convnext"], "head": {"kernel": np.zeros((768, 10)), "bias": np.zeros(10)}}}
    convert.save_perceptual_params(tampered, tmp_path / "tampered.safetensors")
    with pytest.raises(ValueError, match=r"convnext/head/kernel has shape \(768, 10\), expected shape \(768, 1000\)"):
        convert.load_perceptual_params(tmp_path / "tampered.safetensors")


def test_cli_writes_msgpack_that_loads(tmp_path, torch_files, params):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "titok_jax.convert.perceptual",
            f"--lpips_vgg={torch_files['lpips_vgg']}",
            f"--lpips_lin={torch_files['lpips_lin']}",
            f"--output={tmp_path}",
            "--format=msgpack",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = convert.load_perceptual_params(tmp_path, networks=("lpips",))
    assert set(loaded) == {"lpips"}
    jax.tree.map(np.testing.assert_array_equal, loaded["lpips"], params["lpips"])
