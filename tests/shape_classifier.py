"""A small CNN that names the shape kind of a synthetic-shapes image: the tests' judge of whether
decoded images (tokenizer reconstructions, generator samples) show the shapes, not just colours.

It is trained on real images of the built-in data set (another seed than the tokenizer's data), with
each image standardised per channel, so colour carries no class information, and a box blur on half
of the batch, so the slightly soft edges of a decoder's output are in its training distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from titok_jax.data.synthetic import SyntheticShapes


class ShapeNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        mean = images.mean(axis=(1, 2), keepdims=True)
        x = (images - mean) / (images.std(axis=(1, 2), keepdims=True) + 0.05)
        for features, stride in ((32, 2), (64, 1), (64, 2)):
            x = nn.relu(nn.Conv(features, (3, 3), strides=stride)(x))
        # Max and mean over positions: the kind, wherever the shape is.
        x = jnp.concatenate([x.max(axis=(1, 2)), x.mean(axis=(1, 2))], axis=-1)
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(128)(x)))


def _blur(images: jax.Array) -> jax.Array:
    kernel = jnp.ones((3, 3, 1, 3), images.dtype) / 9.0
    return jax.lax.conv_general_dilated(
        images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3
    )


def train_shape_classifier(
    image_size: int = 32, num_classes: int = 10, steps: int = 300, batch_size: int = 64, seed: int = 7
) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """-> (predict: float images (N, H, W, 3) in [0, 1] -> labels (N,), accuracy on 512 held-out real images)."""
    train = SyntheticShapes(4096, image_size, num_classes, seed=seed)
    held_out = SyntheticShapes(512, image_size, num_classes, seed=seed + 1)

    def load(source):
        images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32) / 255
        return images, np.arange(len(source)) % num_classes

    images, labels = load(train)
    model = ShapeNet(num_classes)
    params = model.init(jax.random.key(seed), images[:1])
    optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, steps, 0.05))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        x = jnp.where(jnp.arange(x.shape[0])[:, None, None, None] % 2 == 0, _blur(x), x)

        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(images), batch_size)
        params, opt_state = step(params, opt_state, images[idx], labels[idx])

    apply = jax.jit(lambda x: jnp.argmax(model.apply(params, x), axis=-1))

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(apply(jnp.asarray(x, jnp.float32)))

    test_images, test_labels = load(held_out)
    return predict, float(np.mean(predict(test_images) == test_labels))
