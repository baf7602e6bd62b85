"""`python -m titok_jax.tokenize --num_tokens=k`: a variable-length tokenizer keeps the first k tokens and
decodes that prefix (and a tokens.npz of fewer than K tokens decodes as it is); a tokenizer trained without
token dropout, or a k outside 1..K, is refused with one line before any image is read."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RNGS, model_for
from PIL import Image

from titok_jax import tokenize
from titok_jax.inference.tokenizer import Tokenizer, save_bundle


def _bundle(variant: str, directory) -> tuple[Tokenizer, str]:
    """A tiny tokenizer (32 px, 16 tokens) with random weights, saved as a bundle the command loads."""
    model = model_for(f"titok_single_stage.py:{variant}")
    variables = nn.meta.unbox(jax.jit(model.init)(RNGS, jnp.zeros((1, *model.image_shape))))
    tokenizer = Tokenizer(model, variables)
    return tokenizer, save_bundle(tokenizer, str(directory / variant))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_num_tokens_keeps_the_prefix_and_decodes_it(folder, tmp_path):
    tokenizer, bundle = _bundle("tiny_vq_nested", tmp_path)
    output = tmp_path / "out"
    options = tokenize.Options(tokenizer=bundle, images=str(folder), output=str(output), num_tokens=4)
    summary = tokenize.run(None, options)
    assert summary["tokens"] == [3, 4]
    data = np.load(output / "tokens.npz")
    originals = np.stack([np.asarray(Image.open(folder / name)) for name in data["files"]])
    full = tokenizer.encode(originals)
    assert data["tokens"].shape == (3, 4)
    np.testing.assert_array_equal(data["tokens"], full[:, :4])  # the first 4 of the 16 tokens
    prefix = np.round(tokenizer.decode(full[:, :4]) * 255).astype(np.uint8)
    written = np.stack([np.asarray(Image.open(output / "reconstructions" / f"im{i}.png")) for i in range(3)])
    np.testing.assert_array_equal(written, prefix)
    everything = np.round(tokenizer.decode(full) * 255).astype(np.uint8)
    assert not np.array_equal(written, everything)  # the reconstructions decoded the prefix, not all 16
    np.testing.assert_allclose(summary["mse"], np.mean((tokenizer.decode(full[:, :4]) - originals / 255.0) ** 2),
                               rtol=1e-5)  # fmt: skip

    # The 4-token file decodes as it is, and --num_tokens cuts it further.
    again = tmp_path / "again"
    tokenize.run(None, tokenize.Options(tokenizer=bundle, tokens=str(output / "tokens.npz"), output=str(again)))
    decoded = np.stack([np.asarray(Image.open(again / "reconstructions" / f"im{i}.png")) for i in range(3)])
    np.testing.assert_array_equal(decoded, prefix)
    shorter = tmp_path / "shorter"
    tokenize.run(None, tokenize.Options(tokenizer=bundle, tokens=str(output / "tokens.npz"), output=str(shorter),
                                        num_tokens=2))  # fmt: skip
    two = np.stack([np.asarray(Image.open(shorter / "reconstructions" / f"im{i}.png")) for i in range(3)])
    np.testing.assert_array_equal(two, np.round(tokenizer.decode(full[:, :2]) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"--num_tokens=8, but .* holds tokens of shape \(3, 4\): at most 4"):
        tokenize.run(None, tokenize.Options(tokenizer=bundle, tokens=str(output / "tokens.npz"),
                                            output=str(tmp_path / "x"), num_tokens=8))  # fmt: skip


def test_num_tokens_is_refused_for_a_fixed_length_tokenizer_or_outside_1_to_k(folder, tmp_path):
    _, plain = _bundle("tiny_vq", tmp_path)
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=r"trained without token dropout .* drop --num_tokens") as error:
        tokenize.run(None, tokenize.Options(tokenizer=plain, images=str(folder), output=str(output), num_tokens=4))
    assert "\n" not in str(error.value)
    assert not output.exists()  # refused before anything was read or written
    # All K tokens is what it always decodes.
    summary = tokenize.run(None, tokenize.Options(tokenizer=plain, images=str(folder), output=str(output),
                                                  num_tokens=16))  # fmt: skip
    assert summary["tokens"] == [3, 16]
    _, nested = _bundle("tiny_vq_nested", tmp_path)
    for k in (-1, 17):
        with pytest.raises(ValueError, match=rf"--num_tokens: \[{k}\] lie outside 1..16"):
            tokenize.run(None, tokenize.Options(tokenizer=nested, images=str(folder), output=str(tmp_path / "y"),
                                                num_tokens=k))  # fmt: skip
