"""The PyTorch reference of the official models (official_torch_reference.py) against the spec's facts:
exact parameter counts and key layouts of every published checkpoint (built on the meta device), and
small forward passes re-derived by hand (attention, legacy reshape, VQ argmin, pixel heads, VQGAN quirks)."""

import math

import pytest
import torch
import torch.nn.functional as F
from official_torch_reference import (
    GENERATOR_VARIANTS,
    TOKENIZER_VARIANTS,
    Conv2dSame,
    OfficialImageBert,
    OfficialTiTok,
    OfficialUViTBert,
    OfficialVQGANPort,
    ResnetBlock,
    randomize_,
)

TOKENIZER_PARAMS = {
    "titok_l32": 641_054_735,
    "titok_b64": 204_814_095,
    "titok_s128": 83_674_639,
    "titok_bl64_vq8k": 390_016_148,
    "titok_bl128_vq8k": 390_179_988,
    "titok_sl256_vq8k": 330_260_884,
    "titok_ll32_vae_c16": 606_879_604,
    "titok_bl64_vae_c16": 389_418_100,
    "titok_bl128_vae_c16": 389_581_940,
}
GENERATOR_PARAMS = {"titok_l32": 177_202_432, "titok_b64": 177_227_008, "titok_s128": 294_990_848}


def _meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _generator_cls(config):
    return OfficialUViTBert if config["model"]["generator"]["model_type"] == "UViT" else OfficialImageBert


# ---------------------------------------------------------------------------- published checkpoints


def test_variant_tables_are_complete():
    assert set(TOKENIZER_VARIANTS) == set(TOKENIZER_PARAMS)
    assert set(GENERATOR_VARIANTS) == set(GENERATOR_PARAMS)
    for name, config in GENERATOR_VARIANTS.items():  # a generator config carries its tokenizer's vq_model
        assert config["model"]["vq_model"] == TOKENIZER_VARIANTS[name]["model"]["vq_model"]
        assert config["model"]["generator"]["image_seq_len"] == config["model"]["vq_model"]["num_latent_tokens"]


@pytest.mark.parametrize("name", sorted(TOKENIZER_PARAMS))
def test_tokenizer_parameter_count_and_top_level_keys(name):
    config = TOKENIZER_VARIANTS[name]
    vq = config["model"]["vq_model"]
    shapes = _shapes(_meta(OfficialTiTok, config))
    assert sum(math.prod(s) for s in shapes.values()) == TOKENIZER_PARAMS[name]
    tops = {k.split(".")[0] for k in shapes}
    expected = {"latent_tokens", "encoder", "decoder"}
    if vq.get("quantize_mode", "vq") == "vq":
        expected.add("quantize")
        assert shapes["quantize.embedding.weight"] == (vq["codebook_size"], vq["token_size"])
    if vq.get("finetune_decoder", True):
        expected |= {"pixel_quantize", "pixel_decoder"}
    assert tops == expected
    width = {"small": 512, "base": 768, "large": 1024}
    we, wd, k, t = (
        width[vq["vit_enc_model_size"]],
        width[vq["vit_dec_model_size"]],
        vq["num_latent_tokens"],
        vq["token_size"],
    )
    t_out = 2 * t if vq.get("quantize_mode") == "vae" else t
    assert shapes["latent_tokens"] == (k, we)
    assert shapes["encoder.conv_out.weight"] == (t_out, we, 1, 1)
    assert shapes["decoder.decoder_embed.weight"] == (wd, t)
    assert shapes["decoder.latent_token_positional_embedding"] == (k, wd)
    if vq.get("is_legacy", True):
        assert shapes["decoder.ffn.2.weight"] == (1024, 2 * wd, 1, 1) and "decoder.conv_out.weight" not in shapes
    else:
        assert shapes["decoder.ffn.0.weight"] == (16 * 16 * 3, wd, 1, 1)
        assert shapes["decoder.conv_out.weight"] == (3, 3, 3, 3) and "decoder.ffn.2.weight" not in shapes


def test_titok_l32_keys_and_shapes_from_the_spec():
    s = _shapes(_meta(OfficialTiTok, TOKENIZER_VARIANTS["titok_l32"]))
    w = 1024
    for prefix in ("encoder", "decoder"):
        assert s[f"{prefix}.class_embedding"] == (1, w)
        assert s[f"{prefix}.positional_embedding"] == (257, w)
        assert s[f"{prefix}.latent_token_positional_embedding"] == (32, w)
        for norm in ("ln_pre", "ln_post", "transformer.23.ln_1", "transformer.23.ln_2"):
            assert s[f"{prefix}.{norm}.weight"] == s[f"{prefix}.{norm}.bias"] == (w,)
        block = f"{prefix}.transformer.23"
        assert s[f"{block}.attn.in_proj_weight"] == (3 * w, w) and s[f"{block}.attn.in_proj_bias"] == (3 * w,)
        assert s[f"{block}.attn.out_proj.weight"] == (w, w) and s[f"{block}.attn.out_proj.bias"] == (w,)
        assert s[f"{block}.mlp.c_fc.weight"] == (4 * w, w) and s[f"{block}.mlp.c_fc.bias"] == (4 * w,)
        assert s[f"{block}.mlp.c_proj.weight"] == (w, 4 * w) and s[f"{block}.mlp.c_proj.bias"] == (w,)
        assert f"{prefix}.transformer.24.ln_1.weight" not in s
    assert s["encoder.patch_embed.weight"] == (w, 3, 16, 16) and s["encoder.patch_embed.bias"] == (w,)
    assert s["decoder.mask_token"] == (1, 1, w)
    assert s["decoder.ffn.0.weight"] == (2 * w, w, 1, 1) and s["decoder.ffn.2.bias"] == (1024,)
    assert s["quantize.embedding.weight"] == (4096, 12)
    assert s["pixel_quantize.embedding.weight"] == (1024, 256)
    assert s["pixel_decoder.conv_in.weight"] == (512, 256, 3, 3)
    assert s["pixel_decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert s["pixel_decoder.norm_out.weight"] == (128,)
    assert s["pixel_decoder.mid.1.conv2.weight"] == (512, 512, 3, 3)
    for i, ch in enumerate([128, 128, 256, 256, 512]):
        for j in (0, 1):
            assert s[f"pixel_decoder.up.{i}.block.{j}.conv2.weight"] == (ch, ch, 3, 3)
        assert (f"pixel_decoder.up.{i}.upsample_conv.weight" in s) == (i != 0)
    assert s["pixel_decoder.up.3.block.0.nin_shortcut.weight"] == (256, 256, 1, 1)  # 512 -> 256, out -> out
    pixel = sum(math.prod(v) for k, v in s.items() if k.startswith("pixel_"))
    assert 30.0e6 < pixel < 31.0e6  # "~30.5M pixel decoder"


def test_pixel_decoder_has_the_vqgan_port_decoder_keys():
    titok = _shapes(_meta(OfficialTiTok, TOKENIZER_VARIANTS["titok_s128"]))
    with torch.device("meta"):
        port = _shapes(OfficialVQGANPort())
    assert {k[len("pixel_decoder.") :]: v for k, v in titok.items() if k.startswith("pixel_decoder.")} == {
        k[len("decoder.") :]: v for k, v in port.items() if k.startswith("decoder.")
    }
    assert port["quantize.embedding.weight"] == titok["pixel_quantize.embedding.weight"] == (1024, 256)
    assert port["encoder.conv_in.weight"] == (128, 3, 3, 3) and "encoder.conv_in.bias" not in port
    assert port["encoder.conv_out.weight"] == (256, 512, 1, 1) and port["encoder.conv_out.bias"] == (256,)
    assert port["encoder.down.2.block.0.nin_shortcut.weight"] == (256, 256, 1, 1)
    assert "encoder.down.0.block.0.conv1.bias" not in port and "decoder.up.1.upsample_conv.bias" in port


@pytest.mark.parametrize("name", sorted(GENERATOR_PARAMS))
def test_generator_parameter_count_and_keys(name):
    config = GENERATOR_VARIANTS[name]
    k = config["model"]["vq_model"]["num_latent_tokens"]
    s = _shapes(_meta(_generator_cls(config), config))
    assert sum(math.prod(v) for v in s.values()) == GENERATOR_PARAMS[name]
    if name == "titok_s128":
        assert s["embeddings.weight"] == (5098, 1024) and s["pos_embed"] == (1, k + 1, 1024)
        assert s["in_blocks.9.attn.qkv.weight"] == (3072, 1024) and "in_blocks.9.attn.qkv.bias" not in s
        assert s["mid_block.mlp.fc1.weight"] == (4096, 1024) and s["mid_block.attn.proj.bias"] == (1024,)
        assert s["out_blocks.9.skip_linear.weight"] == (1024, 2048) and "in_blocks.0.skip_linear.weight" not in s
        assert "in_blocks.10.norm1.weight" not in s and s["norm.weight"] == (1024,)
        assert s["lm_head.weight"] == (4096, 1024) and s["lm_head.bias"] == (4096,)
        return
    emb, layer = "model.embeddings", "model.encoder.layer.23"
    assert s[f"{emb}.word_embeddings.weight"] == (5098, 768)
    assert s[f"{emb}.position_embeddings.weight"] == (k + 1, 768)
    assert s[f"{emb}.token_type_embeddings.weight"] == (2, 768)
    assert s[f"{emb}.LayerNorm.weight"] == s[f"{emb}.LayerNorm.bias"] == (768,)
    for part in ("query", "key", "value"):
        assert s[f"{layer}.attention.self.{part}.weight"] == (768, 768) and s[f"{layer}.attention.self.{part}.bias"]
    assert s[f"{layer}.attention.output.dense.weight"] == (768, 768)
    assert s[f"{layer}.attention.output.LayerNorm.weight"] == (768,)
    assert s[f"{layer}.intermediate.dense.weight"] == (3072, 768)
    assert s[f"{layer}.output.dense.weight"] == (768, 3072) and s[f"{layer}.output.LayerNorm.bias"] == (768,)
    assert s["model.lm_head.weight"] == (4096, 768) and s["model.lm_head.bias"] == (4096,)
    assert "model.encoder.layer.24.output.dense.weight" not in s
    assert not any("position_ids" in key or "token_type_ids" in key or "pooler" in key for key in s)


# ---------------------------------------------------------------------------- tiny forward passes

_TINY_VIT = dict(
    vit_enc_model_size="small", vit_dec_model_size="small", vit_enc_patch_size=8, vit_dec_patch_size=8,
    vit_enc_width=32, vit_enc_depth=2, vit_enc_num_heads=2, vit_dec_width=48, vit_dec_depth=1, vit_dec_num_heads=3,
)  # fmt: skip
_TINY_PIXEL = dict(hidden_channels=32, channel_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=16, num_embeddings=64)
TINY = {
    "two_stage": dict(codebook_size=64, token_size=6, use_l2_norm=True, commitment_cost=0.25, num_latent_tokens=8,
                      finetune_decoder=True, pixel_decoder=_TINY_PIXEL, **_TINY_VIT),
    "single_stage_vq": dict(codebook_size=96, token_size=8, use_l2_norm=False, commitment_cost=0.25,
                            num_latent_tokens=12, finetune_decoder=False, is_legacy=False, **_TINY_VIT),
    "vae": dict(quantize_mode="vae", token_size=4, num_latent_tokens=8, finetune_decoder=False, is_legacy=False,
                **_TINY_VIT),
}  # fmt: skip


def _tiny(name: str, seed: int = 0) -> OfficialTiTok:
    config = {"model": {"vq_model": dict(TINY[name])}, "dataset": {"preprocessing": {"crop_size": 32}}}
    return randomize_(OfficialTiTok(config), seed=seed).eval()


def _images(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ln(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _manual_encoder(model: OfficialTiTok, x: torch.Tensor) -> torch.Tensor:
    """The encoder re-derived batch-first from the state dict (explicit q/k/v split of in_proj)."""
    sd, enc = model.state_dict(), model.encoder
    b, w, heads, k = x.shape[0], enc.width, enc.num_heads, enc.num_latent_tokens
    patches = F.conv2d(x, sd["encoder.patch_embed.weight"], sd["encoder.patch_embed.bias"], stride=enc.patch_size)
    h = torch.cat([sd["encoder.class_embedding"].expand(b, 1, w), patches.flatten(2).transpose(1, 2)], 1)
    h = h + sd["encoder.positional_embedding"]
    h = torch.cat([h, (sd["latent_tokens"] + sd["encoder.latent_token_positional_embedding"]).expand(b, k, w)], 1)
    h = _ln(h, sd, "encoder.ln_pre")
    for i in range(enc.num_layers):
        p = f"encoder.transformer.{i}"
        a = _ln(h, sd, f"{p}.ln_1") @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]
        q, kk, v = (t.reshape(b, -1, heads, w // heads).transpose(1, 2) for t in a.split(w, dim=-1))
        att = ((q @ kk.transpose(-1, -2)) / math.sqrt(w // heads)).softmax(-1) @ v
        h = (
            h
            + att.transpose(1, 2).reshape(b, -1, w) @ sd[f"{p}.attn.out_proj.weight"].T
            + sd[f"{p}.attn.out_proj.bias"]
        )
        m = F.gelu(_ln(h, sd, f"{p}.ln_2") @ sd[f"{p}.mlp.c_fc.weight"].T + sd[f"{p}.mlp.c_fc.bias"])
        h = h + m @ sd[f"{p}.mlp.c_proj.weight"].T + sd[f"{p}.mlp.c_proj.bias"]
    lat = _ln(h[:, -k:], sd, "encoder.ln_post")  # (B, K, W)
    feats = lat.reshape(b, w, k) if enc.is_legacy else lat.transpose(1, 2)  # legacy: reshape, not transpose
    conv_w = sd["encoder.conv_out.weight"][:, :, 0, 0]
    return (torch.einsum("tw,bwk->btk", conv_w, feats) + sd["encoder.conv_out.bias"][:, None])[:, :, None, :]


@pytest.mark.parametrize("name", ["two_stage", "single_stage_vq"])
def test_vq_tokenizer_forward_matches_a_hand_derivation(name):
    model = _tiny(name, seed=1)
    x = _images()
    with torch.no_grad():
        z_raw = model.encoder(x, model.latent_tokens)
        z, info = model.encode(x)
        pixels = model.decode_tokens(info["min_encoding_indices"])
        torch.testing.assert_close(pixels, model.decode_tokens(info["min_encoding_indices"][:, 0]))
        torch.testing.assert_close(pixels, model.decode(z), atol=1e-4, rtol=0)  # z = z + sg(zq - z)
        torch.testing.assert_close(z_raw, _manual_encoder(model, x), atol=1e-5, rtol=1e-5)
    k, token_size = model.num_latent_tokens, TINY[name]["token_size"]
    assert z_raw.shape == z.shape == (3, token_size, 1, k)
    assert info["min_encoding_indices"].shape == (3, 1, k)
    l2 = TINY[name].get("use_l2_norm", False)
    codebook = model.quantize.embedding.weight.detach()
    vectors = z_raw[:, :, 0, :].transpose(1, 2)  # (B, K, C)
    if l2:
        vectors, codebook = F.normalize(vectors, dim=-1), F.normalize(codebook, dim=-1)
    brute = torch.tensor(
        [
            [min(range(len(codebook)), key=lambda c: float(((v - codebook[c]) ** 2).sum())) for v in row]
            for row in vectors
        ]
    )
    assert torch.equal(info["min_encoding_indices"][:, 0], brute)
    assert len(brute.unique()) > 4
    torch.testing.assert_close(z[:, :, 0, :].transpose(1, 2), codebook[brute])
    assert pixels.shape == (3, 3, 32, 32) and pixels.std() > 0.05
    if name == "two_stage":
        assert model.decoder(z).shape == (3, 64, 4, 4)  # logits over the proxy codebook
        assert float(info["quantizer_loss"]) == 0.0  # frozen stage-2 encoder: losses zeroed


def test_legacy_reshape_differs_from_the_fixed_layout():
    model = _tiny("two_stage", seed=2)
    x = _images(seed=1)
    with torch.no_grad():
        legacy = model.encoder(x, model.latent_tokens)
        model.encoder.is_legacy = False
        fixed = model.encoder(x, model.latent_tokens)
    assert not torch.allclose(legacy, fixed, atol=1e-3)


def test_vae_tokenizer_returns_the_posterior_mean():
    model = _tiny("vae", seed=3)
    x = _images(seed=2)
    with torch.no_grad():
        raw = model.encoder(x, model.latent_tokens)
        z, info = model.encode(x)
        pixels = model.decode_tokens(z)
    assert raw.shape == (3, 8, 1, 8) and z.shape == (3, 4, 1, 8)
    torch.testing.assert_close(z, raw[:, :4])
    torch.testing.assert_close(info["logvar"], raw[:, 4:].clamp(-30, 20))
    torch.testing.assert_close(pixels, model.decode(z))
    with torch.no_grad():
        model.encoder.conv_out.bias[4:] += 100.0
        assert float(model.encode(x)[1]["logvar"].max()) == 20.0


def test_single_stage_pixel_head_is_depth_to_space_with_p1_p2_c_channels():
    model = _tiny("single_stage_vq", seed=4)
    ffn0 = model.decoder.ffn[0]
    feats = torch.randn(2, 48, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        channels = ffn0(feats)
        out = model.decoder.ffn(feats)
    p = 8
    for i, j, c in [(0, 0, 0), (3, 5, 1), (7, 7, 2), (1, 6, 2)]:
        torch.testing.assert_close(out[:, c, 2 * p + i, 3 * p + j], channels[:, (i * p + j) * 3 + c, 2, 3])
    assert isinstance(model.decoder.conv_out, torch.nn.Conv2d) and model.decoder.conv_out.padding == (1, 1)


def test_conv2d_same_and_the_output_shortcut_quirk():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 6, 6, generator=gen)
    conv = randomize_(Conv2dSame(32, 8, 3), seed=0)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    strided = randomize_(Conv2dSame(32, 8, 4, stride=2), seed=0)  # i=6: pad 2 -> 1/1; i=5: pad 3 -> 1/2
    torch.testing.assert_close(strided(x), F.conv2d(F.pad(x, [1, 1, 1, 1]), strided.weight, strided.bias, stride=2))
    odd = torch.randn(1, 32, 5, 5, generator=gen)
    torch.testing.assert_close(strided(odd), F.conv2d(F.pad(odd, [1, 2, 1, 2]), strided.weight, strided.bias, stride=2))

    block = randomize_(ResnetBlock(32, 64), seed=1)
    sd = block.state_dict()

    def gn(t, name):
        return F.silu(F.group_norm(t, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-6))

    h = F.conv2d(gn(F.conv2d(gn(x, "norm1"), sd["conv1.weight"], padding=1), "norm2"), sd["conv2.weight"], padding=1)
    torch.testing.assert_close(block(x), h + F.conv2d(h, sd["nin_shortcut.weight"]))
    assert sd["nin_shortcut.weight"].shape == (64, 64, 1, 1) and "conv1.bias" not in sd


def test_small_vqgan_port_codes_and_pixels():
    port = randomize_(OfficialVQGANPort(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8,
                                        num_embeddings=32), seed=5).eval()  # fmt: skip
    x = _images(2, 16, seed=3)
    with torch.no_grad():
        feats = port.encoder(x)
        codes = port.encode(x)
        pixels = port.decode(codes)
        flat_pixels = port.decode(codes.reshape(2, -1))
    assert feats.shape == (2, 8, 8, 8) and codes.shape == (2, 8, 8) and pixels.shape == (2, 3, 16, 16)
    book = port.quantize.embedding.weight.detach()
    brute = ((feats.permute(0, 2, 3, 1)[..., None, :] - book) ** 2).sum(-1).argmin(-1)
    assert torch.equal(codes, brute) and len(codes.unique()) > 4
    torch.testing.assert_close(flat_pixels, pixels)
    torch.testing.assert_close(pixels, port.decode_features(book[codes].permute(0, 3, 1, 2)))
    assert float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0  # decode does not clamp


def _tiny_generator(model_type: str) -> dict:
    generator = dict(model_type=model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, dropout=0.1, attn_drop=0.1, image_seq_len="${model.vq_model.num_latent_tokens}",
                     condition_num_classes=10)  # fmt: skip
    return {"model": {"vq_model": {"codebook_size": 40, "num_latent_tokens": 6}, "generator": generator}}


def _manual_bert(model: OfficialImageBert, ids: torch.Tensor) -> torch.Tensor:
    sd, heads = model.state_dict(), 4
    b, n = ids.shape
    emb = "model.embeddings"
    h = sd[f"{emb}.word_embeddings.weight"][ids] + sd[f"{emb}.position_embeddings.weight"][:n]
    h = _ln(h + sd[f"{emb}.token_type_embeddings.weight"][0], sd, f"{emb}.LayerNorm", 1e-12)

    def lin(t, name):
        return t @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    for i in range(2):
        p = f"model.encoder.layer.{i}"
        q, k, v = (
            lin(h, f"{p}.attention.self.{n_}").reshape(b, n, heads, 8).transpose(1, 2)
            for n_ in ("query", "key", "value")
        )
        ctx = ((q @ k.transpose(-1, -2)) / math.sqrt(8)).softmax(-1) @ v
        h = _ln(lin(ctx.transpose(1, 2).reshape(b, n, 32), f"{p}.attention.output.dense") + h, sd,
                f"{p}.attention.output.LayerNorm", 1e-12)  # fmt: skip
        m = lin(F.gelu(lin(h, f"{p}.intermediate.dense")), f"{p}.output.dense")
        h = _ln(m + h, sd, f"{p}.output.LayerNorm", 1e-12)
    return lin(h[:, 1:], "model.lm_head")


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_tiny_generators(model_type):
    config = _tiny_generator(model_type)
    cls = OfficialUViTBert if model_type == "UViT" else OfficialImageBert
    model = randomize_(cls(config), seed=6).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 41, (3, 6), generator=gen)
    classes = torch.tensor([0, 9, 3])
    with torch.no_grad():
        cond = model(ids, classes, cond_drop_prob=0.0)
        uncond = model(ids, classes, cond_drop_prob=1.0)
        null_class = model(ids, torch.full((3,), 10), cond_drop_prob=0.0)  # 10 + 40 + 1 = the null id 51
    assert cond.shape == (3, 6, 40)
    torch.testing.assert_close(uncond, null_class)
    assert not torch.allclose(cond, uncond, atol=1e-3)
    assert torch.equal(classes, torch.tensor([0, 9, 3]))  # the caller's tensor is not modified
    if model_type == "ViT":
        with torch.no_grad():
            manual = _manual_bert(model, torch.cat([classes[:, None] + 41, ids], 1))
        torch.testing.assert_close(cond, manual, atol=1e-5, rtol=1e-5)
        assert model.state_dict()["model.embeddings.position_embeddings.weight"].shape == (7, 32)
    else:
        assert model.state_dict()["pos_embed"].shape == (1, 7, 32)
        assert len(model.in_blocks) == len(model.out_blocks) == 1


def test_randomize_is_seeded_and_keeps_norms_near_one():
    a = randomize_(_tiny("single_stage_vq").cpu(), seed=7).state_dict()
    b = randomize_(_tiny("single_stage_vq", seed=3), seed=7).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert abs(float(a["encoder.ln_pre.weight"].mean()) - 1.0) < 0.05
    assert float(a["encoder.ln_pre.bias"].abs().max()) < 0.2 and float(a["encoder.ln_pre.bias"].abs().max()) > 0
    assert not torch.equal(
        a["decoder.decoder_embed.weight"],
        randomize_(_tiny("single_stage_vq"), 8).state_dict()["decoder.decoder_embed.weight"],
    )
