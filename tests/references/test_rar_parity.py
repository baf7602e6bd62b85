"""RAR against a PyTorch reference of the official module (tests/references/rar_reference.py, checked against
bytedance/1d-tokenizer's modeling/rar.py: bit-identical logits and the same sampled tokens), through the
converter of the official rar_*.bin layout."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from rar_reference import RAR_SIZES, RARReference, reference_param_count
from train_helpers import tiny_config, write_tokenizer

from titok_jax import Generator, Tokenizer
from titok_jax.convert import rar as convert_rar
from titok_jax.convert import torch_layout as tl
from titok_jax.models.rar import RAR

# The tiny tokenizer's vocabulary (256 codes, 16 tokens) and 10 classes: the converted model can drive it.
SMALL = dict(
    hidden_size=64, depth=2, num_heads=4, intermediate_size=256, num_tokens=16, codebook_size=256, num_classes=10
)


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    reference = RARReference(**SMALL, dropout=0.0, attn_drop=0.0).randomize_(std=0.05).eval()
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    return reference, state


def test_fields_and_weights_convert_both_ways_bit_identically(official):
    _, state = official
    fields = convert_rar.fields_from_state_dict(state)
    assert fields == {"architecture": "rar", **SMALL}
    model = RAR(**SMALL)
    variables = convert_rar.params_from_state_dict(model, state)
    back = convert_rar.state_dict_from_params(model, variables)
    assert sorted(back) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key], err_msg=key)
    again = convert_rar.params_from_state_dict(model, back)
    for a, b in zip(tl.flatten(again["params"]).values(), tl.flatten(variables["params"]).values(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("order", ["raster", "random"])
def test_logits_match_the_official_forward(official, order):
    reference, state = official
    model = RAR(**SMALL, dropout=0.0, attention_dropout=0.0)
    variables = convert_rar.params_from_state_dict(model, state)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 256, (4, 16))
    classes = np.array([0, 3, 9, 10])  # 10: the null class
    orders = np.stack([rng.permutation(16) for _ in range(4)]) if order == "random" else np.tile(np.arange(16), (4, 1))
    condition = torch.as_tensor(classes + 256 + 1)  # the official stored condition id (null = V + 1 + C)
    with torch.no_grad():
        theirs, labels = reference.forward_fn(
            torch.as_tensor(ids), condition, orders=torch.as_tensor(orders), return_labels=True
        )
    theirs = theirs[:, :-1].numpy()  # ARLoss drops the last output
    ours = np.asarray(model.apply(variables, jnp.asarray(ids), jnp.asarray(classes), jnp.asarray(orders)))
    assert ours.shape == theirs.shape == (4, 16, 256)
    difference = float(np.max(np.abs(ours - theirs)))
    print(f"max |logit difference| {difference:.2e} (logits up to {np.max(np.abs(theirs)):.2f})")
    assert difference <= 1e-4
    np.testing.assert_array_equal(np.take_along_axis(ids, orders, axis=1), labels.numpy())  # targets permuted alike
    # The mean cross-entropy is the official ARLoss.
    their_loss, _ = reference.loss(torch.as_tensor(np.concatenate([theirs, theirs[:, -1:]], axis=1)), labels)
    log_probs = (
        ours
        - np.log(np.sum(np.exp(ours - ours.max(-1, keepdims=True)), -1, keepdims=True))
        - ours.max(-1, keepdims=True)
    )
    our_loss = -np.mean(np.take_along_axis(log_probs, labels.numpy()[..., None], axis=-1))
    assert our_loss == pytest.approx(float(their_loss), rel=1e-5)


def test_cached_next_token_logits_match_the_officials_on_a_prefix(official):
    reference, state = official
    model = RAR(**SMALL, dropout=0.0, attention_dropout=0.0)
    variables = convert_rar.params_from_state_dict(model, state)
    prefix = np.random.default_rng(2).integers(0, 256, (2, 5))
    classes = np.array([1, 7])
    with torch.no_grad():
        theirs = reference.logits_next(torch.as_tensor(prefix), torch.as_tensor(classes + 257)).numpy()
    logits, cache = model.apply(variables, jnp.asarray(classes), model.init_cache(2), method=RAR.prefill)
    for step in range(1, 6):
        logits, cache = model.apply(
            variables, jnp.asarray(prefix[:, step - 1]), jnp.int32(step), jnp.asarray(classes), cache,
            method=RAR.decode_step,
        )  # fmt: skip
    np.testing.assert_allclose(np.asarray(logits), theirs, atol=1e-4)


def test_reference_counts_agree_with_ours():
    for name, (width, depth, mlp) in RAR_SIZES.items():
        assert reference_param_count(width, depth, intermediate_size=mlp) == {
            "rar_b": 260_923_648, "rar_l": 461_668_352, "rar_xl": 955_425_024, "rar_xxl": 1_498_520_704,
        }[name]  # fmt: skip


def test_an_official_weights_file_loads_as_a_generator(official, tmp_path):
    _, state = official
    weights = str(tmp_path / "rar_tiny.bin")
    torch.save({k: torch.as_tensor(v) for k, v in state.items()}, weights)
    tokenizer_dir = str(tmp_path / "tokenizer")
    write_tokenizer(tiny_config("single_stage:tiny_vq"), tokenizer_dir)
    tokenizer = Tokenizer.load(tokenizer_dir, tiny_config("single_stage:tiny_vq"))
    generator = Generator.load(weights, tokenizer=tokenizer)
    assert type(generator.model).__name__ == "RAR" and generator.model.num_tokens == 16
    assert generator.settings.guidance_scale == 4.0  # not a released size: the README demo's constant guidance
    images, tokens = generator.generate(np.arange(4), seed=0)
    assert images.shape == (4, 32, 32, 3) and tokens.shape == (4, 16)
    # A file that is not a RAR state dict names what is missing; a wrong shape names the tensor.
    broken = dict(state)
    broken.pop("lm_head.weight")
    with pytest.raises(ValueError, match=r"not an official RAR checkpoint: it has no lm_head\.weight"):
        convert_rar.fields_from_state_dict(broken, "x.bin")
    wrong = {**state, "blocks.1.mlp.fc2.bias": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        convert_rar.params_from_state_dict(RAR(**SMALL), wrong)
    assert os.path.getsize(weights) > 0
