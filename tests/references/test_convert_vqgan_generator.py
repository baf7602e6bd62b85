"""The MaskGIT VQGAN's two checkpoint forms and the official generators -> ours, checked against
the official `maskgit` package and a PyTorch reference of the official modules."""

import json

import flax.serialization
import jax
import numpy as np
import pytest
import torch
from maskgit_reference import encode_decode, maskgit_vqgan
from official_torch_reference import (
    GENERATOR_VARIANTS,
    OfficialImageBert,
    OfficialUViTBert,
    OfficialVQGANPort,
    randomize_,
)
from safetensors.torch import save_file as save_torch_safetensors

from titok_jax.convert import generator as cg
from titok_jax.convert import torch_layout as tl
from titok_jax.convert import vqgan as cv
from titok_jax.models.maskgit import maskgit_from_config
from titok_jax.models.vqgan import VQGAN

FULL_VQGAN = dict(
    filters=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, embedding_dim=256, codebook_size=1024
)
# A small VQGAN of the same structure (channel changes, shortcut convs, 2 up / down levels) keeps the numeric test fast.
SMALL_VQGAN = dict(filters=32, channel_multipliers=(1, 2, 2), num_res_blocks=2, embedding_dim=32, codebook_size=128)


def test_vqgan_port_maps_key_for_key():
    with torch.device("meta"):
        port = OfficialVQGANPort()
    entries = cv.vqgan_port_entries(**FULL_VQGAN)
    assert {e.torch_key: e.torch_shape for e in entries} == {k: tuple(v.shape) for k, v in port.state_dict().items()}
    ours = jax.eval_shape(
        lambda x: VQGAN().init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    )
    assert tl.expected_tree_shapes(entries) == tl.flatten_shapes(flax.linen.meta.unbox(ours)["params"])


def test_both_vqgan_checkpoints_give_the_maskgit_packages_codes_and_pixels(tmp_path):
    """maskgit package variables -> (a) its JAX checkpoint file, (b) the PyTorch port layout; both load into
    our VQGAN bit-identically, and the port layout runs in the PyTorch reference to the package's numbers."""
    fields = SMALL_VQGAN
    reference = maskgit_vqgan(**{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()})
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    variables = flax.linen.meta.unbox(reference.init(jax.random.PRNGKey(0), images, method=encode_decode))
    features = reference.apply(variables, images, method=lambda m, x: m.encoder(x)).reshape(-1, fields["embedding_dim"])
    picks = jax.random.choice(jax.random.PRNGKey(2), features.shape[0], (fields["codebook_size"],))
    codebook = features[picks] + 0.05 * jax.random.normal(
        jax.random.PRNGKey(3), (fields["codebook_size"], fields["embedding_dim"])
    )
    variables = {"params": {**variables["params"], "quantizer": {"codebook": codebook}}}
    ref_pixels, ref_codes = jax.device_get(reference.apply(variables, images, method=encode_decode))
    assert len(np.unique(ref_codes)) > 8

    jax_file = tmp_path / "tokenizer_checkpoint"
    jax_file.write_bytes(flax.serialization.to_bytes(variables))
    state = tl.tree_to_state_dict(jax.device_get(variables["params"]), cv.vqgan_port_entries(**fields))
    torch_file = tmp_path / "maskgit-vqgan.bin"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, torch_file)

    port = OfficialVQGANPort(
        hidden_channels=fields["filters"], channel_mult=fields["channel_multipliers"], num_res_blocks=2,
        z_channels=fields["embedding_dim"], num_embeddings=fields["codebook_size"],
    ).eval()  # fmt: skip
    port.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        nchw = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
        port_codes = port.encode(nchw).numpy()
        port_pixels = port.decode(torch.from_numpy(port_codes)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(port_codes, ref_codes)
    np.testing.assert_allclose(port_pixels, ref_pixels, atol=1e-4, rtol=0)

    ours = VQGAN(**fields)
    for path in (jax_file, torch_file):
        loaded = cv.load_vqgan_variables(path, fields)
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, jax.device_get(variables)
        )
        pixels, codes = ours.apply(loaded, images)
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_allclose(pixels, ref_pixels, atol=1e-5, rtol=0)


def test_vqgan_port_of_another_size_is_refused(tmp_path):
    small = OfficialVQGANPort(hidden_channels=32, channel_mult=(1, 2))
    path = tmp_path / "small.safetensors"
    save_torch_safetensors({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    with pytest.raises(
        ValueError, match=r"(?s)Not a MaskGIT VQGAN PyTorch port.*missing key 'encoder.down.2.block.0.norm1.weight'"
    ):
        cv.load_vqgan_variables(path, FULL_VQGAN)


def _tiny_generator_config(model_type: str) -> dict:
    generator = dict(
        model_type=model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        dropout=0.1, attn_drop=0.1, image_seq_len=6, condition_num_classes=10, num_steps=8, guidance_scale=2.0,
        randomize_temperature=1.0, guidance_decay="linear",
    )  # fmt: skip
    return {"model": {"vq_model": {"codebook_size": 40, "num_latent_tokens": 6}, "generator": generator}}


@pytest.mark.parametrize("variant", sorted(GENERATOR_VARIANTS))
def test_released_generators_map_key_for_key(variant):
    config = GENERATOR_VARIANTS[variant]
    fields, sampling = cg.fields_from_hub_config(config)
    cls = OfficialUViTBert if fields["architecture"] == "uvit" else OfficialImageBert
    with torch.device("meta"):
        official = cls(config)
    model = maskgit_from_config(fields)
    entries = cg.generator_entries(model)
    assert {e.torch_key: e.torch_shape for e in entries} == {
        k: tuple(v.shape) for k, v in official.state_dict().items()
    }
    assert tl.expected_tree_shapes(entries) == tl.flatten_shapes(cg.expected_params(model))
    assert sampling["num_steps"] == config["model"]["generator"]["num_steps"]


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_generator_logits_match_the_official_model(model_type, tmp_path):
    config = _tiny_generator_config(model_type)
    cls = OfficialUViTBert if model_type == "UViT" else OfficialImageBert
    official = randomize_(cls(config), seed=5).eval()
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps(config))
    state = dict(official.state_dict())
    if model_type == "ViT":  # older transformers releases saved this buffer; it must be accepted and dropped
        state["model.embeddings.position_ids"] = torch.arange(7)[None]
    torch.save(state, hub / "pytorch_model.bin")
    model, variables, _, sampling = cg.load_official_generator(str(hub))
    assert sampling == {
        "num_steps": 8,
        "guidance_scale": 2.0,
        "randomize_temperature": 1.0,
        "guidance_schedule": "linear",
    }

    rng = np.random.default_rng(6)
    ids = rng.integers(0, 41, (3, 6))  # codes and the [MASK] id 40
    classes = np.array([0, 9, 3])
    for drop in (0.0, 1.0):  # conditional, and the null class
        with torch.no_grad():
            ref = official(torch.from_numpy(ids), torch.from_numpy(classes), cond_drop_prob=drop).numpy()
        ours = model.apply(variables, ids, np.full(3, 10) if drop else classes)
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    state.pop("model.embeddings.position_ids", None)
    back = cg.state_dict_from_params(model, variables)
    assert back.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
