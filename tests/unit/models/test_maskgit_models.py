"""MaskGIT generators: exact parameter counts of the official layouts, shapes, class tokens, dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_params

from titok_jax.models.maskgit import MaskGITBert, MaskGITUViT


def _bert_count(hidden, layers, intermediate, vocab, positions, codebook):
    """HF BertModel (no pooler) + lm_head, counted by hand from its layout."""
    embeddings = (vocab + positions + 2) * hidden + 2 * hidden
    per_layer = (
        4 * (hidden * hidden + hidden) + 2 * hidden + 2 * hidden * intermediate + intermediate + hidden + 2 * hidden
    )
    return embeddings + layers * per_layer + hidden * codebook + codebook


def _uvit_count(hidden, depth, mlp, vocab, positions, codebook):
    block = 2 * hidden + 3 * hidden * hidden + hidden * hidden + hidden + 2 * hidden + 2 * hidden * mlp + mlp + hidden
    skip = 2 * hidden * hidden + hidden
    return (
        (vocab + positions) * hidden
        + (depth + 1) * block
        + (depth // 2) * skip
        + 2 * hidden
        + hidden * codebook
        + codebook
    )


@pytest.mark.parametrize(
    "name, model, expected",
    [
        # 4096 codes + 1000 classes + [MASK] + null = 5098 ids; K + 1 positions.
        ("L-32 ViT", MaskGITBert(num_tokens=32), 177_202_432),
        ("B-64 ViT", MaskGITBert(num_tokens=64), 177_227_008),
        ("S-128 UViT", MaskGITUViT(num_tokens=128), 294_990_848),
    ],
)
def test_published_generator_parameter_counts(name, model, expected):
    ids = jnp.zeros((1, model.num_tokens), jnp.int32)
    params = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, jnp.zeros((1,), jnp.int32))))
    if isinstance(model, MaskGITBert):
        assert expected == _bert_count(768, 24, 3072, 5098, model.num_tokens + 1, 4096)
    else:
        assert expected == _uvit_count(1024, 20, 4096, 5098, model.num_tokens + 1, 4096)
    assert count_params(params) == expected, name


TINY = dict(codebook_size=16, num_classes=4, num_tokens=8, hidden_size=32, depth=2, num_heads=2, intermediate_size=64)


@pytest.mark.parametrize("cls", [MaskGITBert, MaskGITUViT])
def test_logits_shape_class_conditioning_and_dropout(cls):
    model = cls(**TINY)
    ids = jax.random.randint(jax.random.PRNGKey(0), (3, 8), 0, 17)  # codes and [MASK] (16)
    classes = jnp.array([0, 1, 4])  # 4 = null class
    variables = model.init(jax.random.PRNGKey(1), ids, classes)
    logits = model.apply(variables, ids, classes)
    assert logits.shape == (3, 8, 16) and logits.dtype == jnp.float32
    # The class token changes the logits; the same class gives the same logits.
    other = model.apply(variables, ids, jnp.array([2, 1, 0]))
    assert not np.allclose(logits[0], other[0]) and np.allclose(logits[1], other[1], atol=1e-6)
    vocab = variables["params"]["word_embeddings" if cls is MaskGITBert else "embeddings"]["embedding"]
    assert vocab.value.shape[0] == 16 + 4 + 2
    if cls is MaskGITBert:  # dropout 0.1 only when training
        train = model.apply(variables, ids, classes, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
        assert not np.allclose(train, logits)
    with pytest.raises(ValueError, match=r"expects token ids \(batch, 8\)"):
        model.apply(variables, ids[:, :5], classes)


@pytest.mark.parametrize("cls", [MaskGITBert, MaskGITUViT])
def test_prefix_lengths_hide_the_tail_from_every_position_before_it(cls):
    """With lengths=k, no logit at a position < k depends on the tokens at positions >= k (bit for bit, in training
    mode too: attention dropout included); lengths=K equals lengths=None; no parameter is added."""
    model = cls(**TINY)
    ids = jax.random.randint(jax.random.PRNGKey(0), (3, 8), 0, 17)
    classes = jnp.array([0, 1, 4])
    variables = model.init(jax.random.PRNGKey(1), ids, classes)
    with_lengths = model.init(jax.random.PRNGKey(1), ids, classes, lengths=jnp.array([1, 3, 8]))
    assert jax.tree.structure(with_lengths) == jax.tree.structure(variables)
    lengths = jnp.array([1, 3, 8])
    tail = np.arange(8)[None] >= np.asarray(lengths)[:, None]
    other = jnp.where(tail, (ids + 5) % 17, ids)  # every tail token changed
    head = ~tail[..., None]
    for kwargs in ({}, {"deterministic": False, "rngs": {"dropout": jax.random.PRNGKey(2)}}):
        logits = model.apply(variables, ids, classes, lengths=lengths, **kwargs)
        changed = model.apply(variables, other, classes, lengths=lengths, **kwargs)
        np.testing.assert_array_equal(np.where(head, logits, 0), np.where(head, changed, 0))
        assert not np.allclose(logits[1, 3:], changed[1, 3:])  # the tail's own outputs do see it
    # Without lengths the tail is seen everywhere (the official model); lengths = K changes nothing.
    full = model.apply(variables, ids, classes)
    assert not np.allclose(full[0, 0], model.apply(variables, other, classes)[0, 0])
    np.testing.assert_array_equal(model.apply(variables, ids, classes, lengths=jnp.full((3,), 8)), full)
    with pytest.raises(ValueError, match=r"lengths must be \(batch,\)"):
        model.apply(variables, ids, classes, lengths=jnp.array([1, 2]))
