"""The official google-research/maskgit VQGAN (PyPI `maskgit`), used as a test reference."""

import jax
import jax.numpy as jnp
from maskgit.configs import vqgan_config
from maskgit.nets import vqgan_tokenizer


def maskgit_vqgan(**vqvae_overrides):
    """The official VQVAE (ImageNet config), with `vqvae_overrides` (e.g. filters=32) for small test models."""
    config = vqgan_config.get_config()
    config.vqvae.update(vqvae_overrides)
    return vqgan_tokenizer.VQVAE(config=config, train=False)


def encode_decode(module, images):
    """encode -> decode. VQVAE.__call__ passes the encoder's (quantized, dict) tuple
    to the decoder and fails, so init and apply go through this method instead."""
    quantized, result = module.encode({"image": images})
    return module.decode(quantized), result["encoding_indices"]


def maskgit_vqgan_abstract_params(image_size: int = 64):
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: maskgit_vqgan().init(jax.random.PRNGKey(0), x, method=encode_decode), images)
