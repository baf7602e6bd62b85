"""The FID Inception-v3 against pytorch-fid's own torch modules, and its weight converter.

Nothing is downloaded: `fid_inception_v3()` would fetch the real weights, so the
reference is built the way it builds the network (torchvision's Inception-v3 with
num_classes=1008, no aux head, and pytorch-fid's patched blocks swapped in) and
given random weights. Every conv, BatchNorm (including the running statistics)
and fc tensor is randomised, so each converted tensor and the BN arithmetic matter.
Conv weights are He-scaled so activations stay O(1) through all ~40 layers.
"""

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import EXPERIMENTS, count_params
from pytorch_fid import inception as pytorch_fid_inception

from titok_jax.convert import inception as convert
from titok_jax.evaluation import tokenizer_eval
from titok_jax.models import inception as im
from titok_jax.tasks import evaluate

REPO = EXPERIMENTS.parent


def _fid_inception_v3_random() -> torch.nn.Module:
    """`pytorch_fid.inception.fid_inception_v3()` minus the weight download, with seeded random weights."""
    pfi = pytorch_fid_inception
    model = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = pfi.FIDInceptionE_1(1280)
    model.Mixed_7c = pfi.FIDInceptionE_2(2048)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
                module.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def torch_model():
    return _fid_inception_v3_random()


@pytest.fixture(scope="module")
def torch_wrapper(torch_model, monkeypatch_module):
    """pytorch-fid's `InceptionV3()` (block 3 = pool3, resize + normalise on) around the random network."""
    monkeypatch_module.setattr(pytorch_fid_inception, "fid_inception_v3", lambda: torch_model)
    return pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def variables(torch_model):
    return convert.convert_state_dict(torch_model.state_dict())


@pytest.fixture(scope="module")
def features():
    return jax.jit(im.inception_features)  # one jitted function; it compiles once per image size


def _images(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).random((2, size, size, 3), dtype=np.float32)


def _torch_reference(torch_model, torch_wrapper, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pool3 from pytorch-fid's wrapper; logits from the network's own forward on the wrapper's input handling."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        (pool,) = torch_wrapper(x)
        # InceptionV3.forward's input handling, verbatim, then Inception3's avgpool -> dropout (eval) -> fc.
        logits = torch_model(2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    return pool.flatten(1).numpy(), logits.numpy()


def test_sfid_features_are_pytorch_fids_mixed_6d_1x1_branch(torch_model, torch_wrapper, variables):
    """ADM's sFID features (`mixed_6/conv`, first 7 channels, 17 x 17 x 7 in NHWC order) against a forward hook on
    pytorch-fid's Mixed_6d.branch1x1 (conv + BN + ReLU) on the same random weights."""
    images = _images(3, 64)
    captured = {}
    hook = torch_model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.update(out=o.detach()))
    try:
        _torch_reference(torch_model, torch_wrapper, images)
    finally:
        hook.remove()
    branch = captured["out"]  # (2, 192, 17, 17), from the wrapper's forward (the last one ran the network itself)
    assert tuple(branch.shape) == (2, 192, 17, 17)
    reference = branch[:, :7].permute(0, 2, 3, 1).reshape(2, -1).numpy()
    spatial = jax.jit(im.all_features)(variables, jnp.asarray(images))["spatial"]
    assert spatial.shape == (2, im.SPATIAL_FEATURES) == (2, 2023)
    # Observed max abs difference on CPU (2 cores): 7.2e-6, with features up to 4.6.
    np.testing.assert_allclose(spatial, reference, atol=1e-4, rtol=0)
    assert np.abs(reference).max() > 0.1 and np.mean(reference > 0) > 0.1, "the reference must be far from degenerate"


@pytest.mark.parametrize("size", [32, 512])  # upsampled 32 -> 299, downsampled 512 -> 299 (no antialias)
def test_pool_and_logits_match_pytorch_fid(torch_model, torch_wrapper, variables, features, size):
    images = _images(size, size)
    ref_pool, ref_logits = _torch_reference(torch_model, torch_wrapper, images)
    pool, logits = features(variables, jnp.asarray(images))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    # With these random weights |pool| reaches ~9 and |logits| ~6. Observed max abs differences on
    # CPU (2 cores): 32 px 3.8e-6 (pool) / 4.1e-6 (logits); 512 px 5.2e-6 / 4.8e-6.
    np.testing.assert_allclose(pool, ref_pool, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    assert np.abs(ref_pool).max() > 1.0 and np.std(ref_logits) > 0.1, "the reference must be far from degenerate"


def test_resize_matches_torch_bilinear_without_antialias():
    for size in (32, 320, 512):
        images = _images(size + 1, size)
        ref = F.interpolate(
            torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299), mode="bilinear", align_corners=False
        )
        ours = im.preprocess(jnp.asarray(images))
        np.testing.assert_allclose(ours, 2 * ref.permute(0, 2, 3, 1).numpy() - 1, atol=1e-6, rtol=0)


def test_variables_cover_the_torch_model_with_logical_axes(torch_model, variables):
    boxed = jax.eval_shape(im.FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert jax.tree.structure(nn.meta.unbox(boxed)) == jax.tree.structure(variables)
    assert count_params(variables["params"]) == sum(p.numel() for p in torch_model.parameters())
    running = sum(b.numel() for name, b in torch_model.named_buffers() if not name.endswith("num_batches_tracked"))
    assert count_params(variables["batch_stats"]) == running


def test_converter_file_and_cli_round_trip(tmp_path, torch_model, variables, features):
    weights = tmp_path / convert.TORCH_WEIGHTS_FILENAME
    torch.save(torch_model.state_dict(), weights)  # includes the int64 num_batches_tracked counters

    # Random weights are not pytorch-fid's file (its sha256 starts with 6726825d): refused by name, unless allowed.
    digest = convert.sha256_of(weights)
    with pytest.raises(ValueError, match=f"its sha256 is {digest}, which does not start with 6726825d"):
        convert.convert_file(weights, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    path = convert.convert_file(weights, tmp_path / "by_function", allow_other_weights=True)
    assert path == str(tmp_path / "by_function" / "inception.msgpack")
    assert convert.source_of(path) == {"source": weights.name, "source_sha256": digest, "fid_weights": False}
    # An evaluation refuses the marked conversion, naming the file it came from; the protocol records it.
    with pytest.raises(ValueError, match=r"not from pytorch-fid's pt_inception-2015-12-05-6726825d\.pth"):
        tokenizer_eval.load_inception(path)
    protocol = evaluate.inception_protocol(str(tmp_path / "by_function"))
    assert protocol["inception_source_sha256"] == digest and protocol["inception_sha256"] == convert.sha256_of(path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "titok_jax.convert.inception",
            f"--torch_weights={weights}",
            f"--output={tmp_path}",
            "--allow_other_weights",
        ],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    images = jnp.asarray(_images(32, 32))
    want = features(variables, images)
    for source in (path, tmp_path):  # the file itself, or the directory holding it
        loaded = convert.load_inception_params(source)
        jax.tree.map(np.testing.assert_array_equal, loaded, variables)
        for got, ref in zip(features(loaded, images), want, strict=True):
            np.testing.assert_array_equal(got, ref)


def test_missing_weights_explain_download_and_conversion(tmp_path):
    for missing in (tmp_path / "inception.msgpack", tmp_path):
        with pytest.raises(FileNotFoundError) as err:
            convert.load_inception_params(missing, setting="config.eval.inception_weights")
        message = str(err.value)
        assert convert.CONVERT_COMMAND in message
        assert convert.TORCH_WEIGHTS_URL in message
        assert "config.eval.inception_weights" in message
        assert str(tmp_path / "inception.msgpack") in message
    assert convert.TORCH_WEIGHTS_URL == pytorch_fid_inception.FID_WEIGHTS_URL


def test_converter_names_bad_keys(torch_model, tmp_path, variables):
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    without = {k: v for k, v in state.items() if k != "Mixed_6e.branch7x7dbl_5.conv.weight"}
    with pytest.raises(
        ValueError, match=r"missing key 'Mixed_6e\.branch7x7dbl_5\.conv\.weight' \(expected shape \(192, 192, 1, 7\)\)"
    ):
        convert.convert_state_dict(without)
    # torchvision's ImageNet Inception has 1000 classes and an aux head: not the FID network.
    imagenet_like = {**state, "fc.weight": np.zeros((1000, 2048), np.float32), "AuxLogits.fc.bias": np.zeros(1000)}
    with pytest.raises(ValueError) as err:
        convert.convert_state_dict(imagenet_like)
    assert "key 'fc.weight' has shape (1000, 2048), expected shape (1008, 2048)" in str(err.value)
    assert "unexpected key 'AuxLogits.fc.bias'" in str(err.value)

    tampered = {**variables, "batch_stats": {**variables["batch_stats"], "fc": {"mean": np.zeros(3)}}}
    convert.save_inception_params(tampered, tmp_path / "inception.msgpack")
    with pytest.raises(ValueError, match=re.escape("unexpected batch_stats/fc/mean (shape (3,))")):
        convert.load_inception_params(tmp_path)


def test_rejects_bad_images(variables):
    with pytest.raises(ValueError, match=r"got \(2, 3, 32, 32\)\. The input looks channels-first"):
        im.inception_features(variables, jnp.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match="got dtype uint8"):
        im.inception_features(variables, jnp.zeros((2, 32, 32, 3), jnp.uint8))
