"""Models initialised under an 8-device mesh are sharded by the logical rules."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RNGS, init_sharded, model_for
from jax.sharding import PartitionSpec as P

from titok_jax import sharding as sh


def _init(model, mesh):
    images = jnp.zeros((8, *model.image_shape))
    return init_sharded(lambda: model.init(RNGS, images), mesh)[0]["params"]


def test_params_are_sharded_by_the_logical_rules():
    model = model_for("titok_two_stage.py:tiny,stage=2")
    mesh = sh.make_mesh(data=2, fsdp=2, tensor=2)
    params = _init(model, mesh)
    block = params["encoder"]["transformer"]["block_0"]

    expected = {
        # (array, spec, per-device shard shape)
        "mlp fc kernel (embed, mlp)": (block["mlp"]["fc"]["kernel"], P("fsdp", "tensor"), (32, 128)),
        "qkv kernel (embed, qkv, heads, head_dim)": (
            block["attn"]["qkv_kernel"],
            P("fsdp", None, "tensor", None),
            (32, 3, 1, 32),
        ),
        "attention out (heads, head_dim, embed)": (block["attn"]["out_kernel"], P("tensor", None, "fsdp"), (1, 32, 32)),
        "codebook (codebook, token)": (params["quantize"]["codebook"], P("tensor", None), (128, 8)),
        # mlp and codebook both ask for tensor; a mesh axis is used once, first come.
        "proxy logits (mlp, codebook)": (params["decoder"]["ffn_logits"]["kernel"], P("tensor", None), (64, 64)),
        "latent tokens (length, embed)": (params["latent_tokens"], P(None, "fsdp"), (16, 32)),
        "pixel decoder conv (h, w, in, out)": (
            params["pixel_decoder"]["Conv_0"]["kernel"],
            P(None, None, "fsdp", "tensor"),
            (3, 3, 16, 32),
        ),
        # 3 output channels cannot be split in 2: replicated rather than an error.
        "rgb conv (h, w, in, out=3)": (
            params["pixel_decoder"]["Conv_3"]["kernel"],
            P(None, None, "fsdp", None),
            (3, 3, 16, 3),
        ),
    }
    for what, (array, spec, shard_shape) in expected.items():
        assert array.sharding.spec == spec, what
        assert array.addressable_shards[0].data.shape == shard_shape, what
        assert len(array.devices()) == 8, what


def test_values_do_not_depend_on_the_mesh():
    model = model_for("titok_single_stage.py:tiny_vq")
    sharded = _init(model, sh.make_mesh(data=1, fsdp=8, tensor=1))
    single = nn.meta.unbox(model.init(RNGS, jnp.zeros((8, *model.image_shape))))["params"]
    chex.assert_trees_all_close(jax.device_get(sharded), single, atol=0)
    kernel = sharded["decoder"]["transformer"]["block_1"]["mlp"]["proj"]["kernel"]
    assert kernel.sharding.spec == P("tensor", "fsdp")  # tensor has size 1 here
    assert kernel.addressable_shards[0].data.shape == (256, 8)


def test_make_mesh_fills_and_rejects():
    assert dict(sh.make_mesh(data=-1, fsdp=4).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices, but 8"):
        sh.make_mesh(data=3, fsdp=4, tensor=1)
    with pytest.raises(ValueError, match="not divisible"):
        sh.make_mesh(data=-1, fsdp=3)


def test_batch_sharding_splits_over_data_and_fsdp():
    mesh = sh.make_mesh(data=2, fsdp=2, tensor=2)
    batch = jax.device_put(np.zeros((8, 4, 4, 3), np.float32), sh.batch_sharding(mesh, 4))
    assert batch.addressable_shards[0].data.shape == (2, 4, 4, 3)
