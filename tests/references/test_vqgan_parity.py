"""Our MaskGIT VQGAN against the official `maskgit` package: same tree, same numbers."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from helpers import count_params
from maskgit_reference import encode_decode, maskgit_vqgan, maskgit_vqgan_abstract_params

from titok_jax.models.vqgan import VQGAN


def test_parameter_tree_is_the_official_one():
    reference = maskgit_vqgan_abstract_params(256)
    ours = nn.meta.unbox(jax.eval_shape(VQGAN().init, jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3))))
    chex.assert_trees_all_equal_shapes_and_dtypes(ours, reference)
    assert count_params(ours) == 54_515_587  # the ImageNet-256 VQGAN
    # The shortcut conv exists exactly where a block changes its channel count.
    encoder = ours["params"]["encoder"]
    assert [k for k in sorted(encoder) if "Conv_2" in encoder[k]] == ["ResBlock_4", "ResBlock_8"]


def test_codes_and_pixels_match_the_official_vqgan():
    reference = maskgit_vqgan()
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
    variables = reference.init(jax.random.PRNGKey(0), images, method=encode_decode)
    # A random codebook maps every feature to one or two codes; seed it with
    # perturbed encoder features so the argmin has real choices to make.
    features = reference.apply(variables, images, method=lambda m, x: m.encoder(x)).reshape(-1, 256)
    picks = jax.random.choice(jax.random.PRNGKey(2), features.shape[0], (1024,))
    codebook = features[picks] + 0.05 * jax.random.normal(jax.random.PRNGKey(3), (1024, 256))
    variables = {"params": {**variables["params"], "quantizer": {"codebook": codebook}}}

    ref_pixels, ref_codes = reference.apply(variables, images, method=encode_decode)
    ours = VQGAN()
    pixels, codes = ours.apply(variables, images)

    assert codes.shape == (2, 4, 4)
    assert len(np.unique(ref_codes)) > 8, "the test needs diverse codes to mean anything"
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(pixels, ref_pixels, atol=1e-5, rtol=0)
    # Decoding codes alone is the same path.
    np.testing.assert_allclose(ours.apply(variables, codes, method=ours.decode_codes), ref_pixels, atol=1e-5, rtol=0)
