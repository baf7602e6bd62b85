"""Official TiTok checkpoints <-> ours: key maps of every released variant, exact round trips,
numerical parity with the official model (a PyTorch reference written from the spec), bad files."""

import json
import sys

import numpy as np
import pytest
import torch
from official_torch_reference import TOKENIZER_VARIANTS, OfficialTiTok, randomize_
from safetensors.torch import save_file as save_torch_safetensors

from titok_jax import Tokenizer
from titok_jax.convert import titok as ct
from titok_jax.convert import torch_layout as tl
from titok_jax.models.titok import titok_from_config

# Tiny stand-ins of the three released forms (titok_jax's extension keys give the ViT and pixel-decoder sizes).
_TINY_VIT = dict(
    vit_enc_model_size="small", vit_dec_model_size="small", vit_enc_patch_size=8, vit_dec_patch_size=8,
    vit_enc_width=32, vit_enc_depth=2, vit_enc_num_heads=2, vit_dec_width=48, vit_dec_depth=1, vit_dec_num_heads=3,
)  # fmt: skip
_TINY_PIXEL_DECODER = dict(
    hidden_channels=32, channel_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=16, num_embeddings=64
)
TINY_VARIANTS = {
    "two_stage": dict(
        codebook_size=64, token_size=6, use_l2_norm=True, commitment_cost=0.25, num_latent_tokens=8,
        finetune_decoder=True, pixel_decoder=_TINY_PIXEL_DECODER, **_TINY_VIT,
    ),
    "single_stage_vq": dict(
        codebook_size=96, token_size=8, num_latent_tokens=12, finetune_decoder=False, is_legacy=False, **_TINY_VIT
    ),
    "vae": dict(
        quantize_mode="vae", token_size=4, num_latent_tokens=8, finetune_decoder=False, is_legacy=False, **_TINY_VIT
    ),
}  # fmt: skip


def _tiny_config(name: str) -> dict:
    return {"model": {"vq_model": dict(TINY_VARIANTS[name])}, "dataset": {"preprocessing": {"crop_size": 64}}}


def _model(config: dict):
    return titok_from_config(ct.fields_from_hub_config(config))


def _write_hub_dir(directory, config: dict, state: dict, torch_bin: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if torch_bin:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_torch_safetensors({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))


@pytest.mark.parametrize("variant", sorted(TOKENIZER_VARIANTS))
def test_every_released_tokenizer_maps_key_for_key(variant):
    config = TOKENIZER_VARIANTS[variant]
    with torch.device("meta"):
        official = OfficialTiTok(config)
    official_shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    model = _model(config)
    entries = ct.titok_entries(model)
    # The official state dict, key for key and shape for shape ...
    assert {e.torch_key: e.torch_shape for e in entries} == official_shapes
    # ... fills exactly our parameter tree (nothing left at random init, nothing extra).
    assert tl.expected_tree_shapes(entries) == tl.flatten_shapes(ct.expected_params(model))
    # config.json -> our fields -> config.json -> the same fields.
    assert ct.fields_from_hub_config(ct.hub_config_from_fields(model)) == ct.fields_from_hub_config(config)


@pytest.mark.parametrize("variant", sorted(TOKENIZER_VARIANTS))
def test_round_trip_is_bit_identical_for_every_released_variant(variant):
    """Each tensor goes torch -> ours -> torch unchanged, bit for bit (NaN payloads included).

    A tensor's mapping depends only on its (shape, transpose, reshape, slot) signature, so every
    distinct signature of the full-size variant is run once at full size; the whole-dict path is
    run on the tiny variants below.
    """
    model = _model(TOKENIZER_VARIANTS[variant])
    rng = np.random.default_rng(0)
    signatures = {}
    for entry in ct.titok_entries(model):
        signatures.setdefault((entry.torch_shape, entry.perm, entry.shape, entry.slot), entry)
    for entry in signatures.values():
        bits = np.frombuffer(rng.bytes(4 * int(np.prod(entry.torch_shape))), np.uint32).reshape(entry.torch_shape)
        ours = entry.to_ours(bits.view(np.float32))
        assert ours.shape == entry.ours_shape
        np.testing.assert_array_equal(entry.to_torch(ours).view(np.uint32), bits)


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_whole_checkpoint_round_trip_and_export(variant, tmp_path):
    config = _tiny_config(variant)
    official = randomize_(OfficialTiTok(config), seed=1)
    state = {k: v.detach().numpy() for k, v in official.state_dict().items()}
    model = _model(config)
    variables = ct.params_from_state_dict(model, state)
    back = ct.state_dict_from_params(model, variables)
    assert back.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(back[key].view(np.uint32), state[key].view(np.uint32), err_msg=key)
    # Export: the official model builds from our config.json and loads our weights strictly.
    ct.save_hub_tokenizer(model, variables, tmp_path / "export", allow_custom_sizes=True)
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    reloaded = OfficialTiTok(exported)
    reloaded.load_state_dict(
        {k: torch.from_numpy(v) for k, v in tl.read_state_dict(tmp_path / "export" / "model.safetensors").items()},
        strict=True,
    )
    for key, value in reloaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)


def _images(batch: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("file_kind", ["safetensors", "bin"])
def test_same_weights_give_the_official_tokens_and_pixels(variant, file_kind, tmp_path):
    config = _tiny_config(variant)
    official = randomize_(OfficialTiTok(config), seed=2).eval()
    _write_hub_dir(tmp_path / "hub", config, official.state_dict(), torch_bin=file_kind == "bin")
    tok = Tokenizer.load(str(tmp_path / "hub"))

    images = _images(5, 64, seed=3)
    with torch.no_grad():
        z, info = official.encode(torch.from_numpy(images).permute(0, 3, 1, 2))
        if variant == "vae":
            ref_tokens = z.numpy()[:, :, 0, :].transpose(0, 2, 1)  # (B, C, 1, K) -> (B, K, C) posterior means
            ref_pixels = official.decode(z)
        else:
            ref_tokens = info["min_encoding_indices"].numpy()[:, 0]
            ref_pixels = official.decode_tokens(info["min_encoding_indices"])
    ref_pixels = np.clip(ref_pixels.permute(0, 2, 3, 1).numpy(), 0, 1)

    tokens = tok.encode(images)
    if variant == "vae":
        np.testing.assert_allclose(tokens, ref_tokens, atol=1e-4, rtol=0)
    else:
        assert len(np.unique(ref_tokens)) > 4, "random weights should use several codes"
        np.testing.assert_array_equal(tokens, ref_tokens)
    pixels = tok.decode(tokens)
    assert pixels.std() > 0.05, "the reference decodes to non-trivial pixels"
    np.testing.assert_allclose(pixels, ref_pixels, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def hub_state():
    official = randomize_(OfficialTiTok(_tiny_config("single_stage_vq")), seed=4)
    return {k: v.detach().clone() for k, v in official.state_dict().items()}


def test_missing_unexpected_and_misshaped_keys_are_named(hub_state, tmp_path):
    config = _tiny_config("single_stage_vq")
    broken = dict(hub_state)
    del broken["decoder.ln_post.weight"]
    broken["decoder.extra.weight"] = torch.zeros(3)
    broken["quantize.embedding.weight"] = torch.zeros(50, 8)
    _write_hub_dir(tmp_path / "hub", config, broken)
    with pytest.raises(ValueError) as err:
        Tokenizer.load(str(tmp_path / "hub"))
    message = str(err.value)
    assert "missing key 'decoder.ln_post.weight' (expected shape (48,))" in message
    assert "unexpected key 'decoder.extra.weight' (shape (3,))" in message
    assert "key 'quantize.embedding.weight' has shape (50, 8), expected shape (96, 8)" in message
    assert "Check that config.json belongs to these weights" in message


def test_weights_of_another_variant_are_refused(hub_state, tmp_path):
    other = _tiny_config("single_stage_vq")
    other["model"]["vq_model"]["num_latent_tokens"] = 16
    _write_hub_dir(tmp_path / "hub", other, hub_state)
    with pytest.raises(ValueError, match=r"latent_tokens' has shape \(12, 32\), expected shape \(16, 32\)"):
        Tokenizer.load(str(tmp_path / "hub"))


def test_bad_directories_and_configs_name_the_problem(hub_state, tmp_path, monkeypatch):
    config = _tiny_config("single_stage_vq")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin"):
        Tokenizer.load(str(tmp_path / "no_weights"))
    (tmp_path / "bad_json").mkdir()
    (tmp_path / "bad_json" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        Tokenizer.load(str(tmp_path / "bad_json"))
    bad_size = _tiny_config("single_stage_vq")
    bad_size["model"]["vq_model"]["vit_enc_model_size"] = "huge"
    with pytest.raises(ValueError, match=r"vit_enc_model_size='huge' is not one of \['base', 'large', 'small'\]"):
        ct.fields_from_hub_config(bad_size)
    no_crop = _tiny_config("single_stage_vq")
    del no_crop["dataset"]
    with pytest.raises(ValueError, match=r"no dataset\.preprocessing\.crop_size"):
        ct.fields_from_hub_config(no_crop)
    vae_finetune = _tiny_config("vae")
    vae_finetune["model"]["vq_model"]["finetune_decoder"] = True
    with pytest.raises(ValueError, match="finetune_decoder=true needs quantize_mode 'vq'"):
        ct.fields_from_hub_config(vae_finetune)
    with pytest.raises(ValueError, match="not a TiTok config"):
        ct.fields_from_hub_config({"generator": {}})
    # A weights file needs its config; a .bin without torch says how to get it.
    _write_hub_dir(tmp_path / "bin", config, hub_state, torch_bin=True)
    with pytest.raises(ValueError, match=r"pass config= its config\.json"):
        Tokenizer.load(str(tmp_path / "bin" / "pytorch_model.bin"))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"needs torch: `pip install 'titok_jax\[torch\]'`"):
        Tokenizer.load(str(tmp_path / "bin"))
