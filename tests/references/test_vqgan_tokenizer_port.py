"""The official PyTorch port of the MaskGIT-VQGAN (a torch .bin, as maskgit-vqgan-imagenet-f16-256.bin) as a
Tokenizer: the same codes as the PyTorch reference module of that port, in its raster order, from the .bin
and from the msgpack python -m titok_jax.convert.vqgan writes of it; decode is the port's decode clamped."""

import numpy as np
import torch
from official_torch_reference import OfficialVQGANPort, randomize_

from titok_jax import Tokenizer
from titok_jax.convert import vqgan as cv
from titok_jax.inference import tokenizer as tokenizer_lib

# A small port of the official structure: 2 downsamplings (32 px -> 8 x 8 codes), shortcut convs.
PORT_SIZES = dict(hidden_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, num_embeddings=128)


def test_port_bin_and_its_msgpack_tokenize_as_the_port_does(tmp_path):
    port = randomize_(OfficialVQGANPort(**PORT_SIZES), seed=0).eval()
    images = np.random.RandomState(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        # Codes drawn from the encoder's own features (plus noise), so the nearest codes vary over the image.
        features = port.encoder(nchw).permute(0, 2, 3, 1).reshape(-1, PORT_SIZES["z_channels"])
        picks = torch.randint(
            0, features.shape[0], (PORT_SIZES["num_embeddings"],), generator=torch.Generator().manual_seed(2)
        )
        port.quantize.embedding.weight.copy_(features[picks] + 0.05 * torch.randn(picks.shape[0], features.shape[1]))
        port_codes = port.encode(nchw).numpy()  # (B, h, w)
        port_pixels = port.decode(torch.from_numpy(port_codes)).permute(0, 2, 3, 1).numpy()
    assert len(np.unique(port_codes)) > 8
    checkpoint = tmp_path / "maskgit-vqgan-imagenet-f16-256.bin"
    torch.save(port.state_dict(), checkpoint)
    msgpack = tmp_path / "vqgan.msgpack"
    cv.run(None, cv.Options(checkpoint=str(checkpoint), output=str(msgpack)))  # sized off the .bin's shapes

    # The sizes come from the file alone; the image size from config.
    fields = cv.read_fields(checkpoint)
    assert fields == dict(
        filters=32, channel_multipliers=(1, 2, 2), num_res_blocks=1, embedding_dim=32, codebook_size=128
    )
    assert tokenizer_lib.is_vqgan_checkpoint(checkpoint) and tokenizer_lib.is_exported_tokenizer(checkpoint)
    from_bin = Tokenizer.load(checkpoint, config={"image_size": 32})
    from_msgpack = Tokenizer.load(msgpack, config={"image_size": 32})
    codes = from_bin.encode(images)
    assert codes.shape == (4, 64) and codes.dtype == np.int32
    np.testing.assert_array_equal(codes, port_codes.reshape(4, -1))  # the port's (B, h, w), row-major
    np.testing.assert_array_equal(from_msgpack.encode(images), codes)
    assert from_bin.identity()["codebook_sha256"] == from_msgpack.identity()["codebook_sha256"]
    np.testing.assert_allclose(from_bin.decode(codes), np.clip(port_pixels, 0.0, 1.0), atol=1e-4, rtol=0)
