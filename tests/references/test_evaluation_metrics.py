"""Evaluation math against references: Fréchet distance (pytorch-fid's scipy formula, closed forms),
streaming statistics over 8 sharded devices, Inception Score, codebook usage / entropy, PSNR / SSIM (skimage)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from titok_jax import sharding as sh
from titok_jax.evaluation import fid, scores
from titok_jax.evaluation.statistics import RunningStatistics


def _gaussian(rng, dim, shift=0.0):
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim) + shift, a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_matches_pytorch_fid_and_closed_forms():
    rng = np.random.default_rng(0)
    (mu1, s1), (mu2, s2) = _gaussian(rng, 64), _gaussian(rng, 64, shift=0.5)
    np.testing.assert_allclose(
        fid.frechet_distance(mu1, s1, mu2, s2), calculate_frechet_distance(mu1, s1, mu2, s2), rtol=1e-8
    )
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.5, 2, 16), rng.uniform(0.5, 2, 16)
    expected = np.sum((mu1[:16] - mu2[:16]) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(fid.frechet_distance(mu1[:16], np.diag(a), mu2[:16], np.diag(b)), expected, rtol=1e-10)
    # A set against itself, and singular covariances (fewer samples than dimensions) stay finite and ~0.
    stats = RunningStatistics(32)
    stats.update(rng.normal(size=(10, 32)))
    mu, sigma = stats.mean_and_covariance()
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(
        sigma
    )  # rank 9 of 32: sqrt of ~0 eigenvalues
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(mu, sigma, mu[:8], sigma[:8, :8])


def test_streaming_statistics_over_8_devices_with_a_ragged_last_batch_equal_one_pass():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(37, 16)) * 3 + 1
    mesh = sh.make_mesh(data=8, fsdp=1, tensor=1)
    stats = RunningStatistics(16)
    for start in range(0, 40, 8):  # 5 global batches of 8, the last padded with 5 masked rows
        chunk = features[start : start + 8]
        mask = np.arange(8) < len(chunk)
        padded = np.concatenate([chunk, np.full((8 - len(chunk), 16), 1e6)]).astype(np.float32)
        sharded = jax.device_put(jnp.asarray(padded), sh.batch_sharding(mesh, 2))
        assert len(sharded.sharding.device_set) == 8
        stats.update(sharded, jax.device_put(jnp.asarray(mask), sh.batch_sharding(mesh, 1)))
    mean, covariance = stats.mean_and_covariance()
    assert stats.count == 37
    np.testing.assert_allclose(mean, features.astype(np.float32).mean(0), rtol=1e-6)
    np.testing.assert_allclose(covariance, np.cov(features.astype(np.float32), rowvar=False), rtol=1e-5, atol=1e-6)


def test_statistics_files_round_trip_and_refuse_other_npz(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    fid.save_statistics(str(tmp_path / "ref.npz"), mu, sigma)
    loaded = fid.load_statistics(str(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(loaded[0], mu) and np.testing.assert_array_equal(loaded[1], sigma)
    np.savez(tmp_path / "samples.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="not reference statistics"):
        fid.load_statistics(str(tmp_path / "samples.npz"))
    with pytest.raises(FileNotFoundError, match="do not exist"):
        fid.load_statistics(str(tmp_path / "missing.npz"))


def test_inception_score_hand_computed():
    assert scores.inception_score(np.zeros((20, 1008)), splits=2) == pytest.approx((1.0, 0.0))
    # 10 confident, distinct classes per split: p(y) uniform over 10 -> IS = 10.
    confident = np.full((20, 1008), -1e4)
    confident[np.arange(20), np.arange(20) % 10] = 0.0
    mean, std = scores.inception_score(confident, splits=2)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Half the mass on the own class, half spread: exp(KL) computed by hand for a 2-class toy.
    logits = np.log(np.array([[0.75, 0.25], [0.25, 0.75]]))
    kl = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert scores.inception_score(logits, splits=1)[0] == pytest.approx(np.exp(kl), rel=1e-12)


def test_codebook_usage_and_entropy_hand_computed():
    usage, entropy = scores.codebook_usage_and_entropy(np.array([2, 2, 0, 4]))
    assert usage == 0.75 and entropy == pytest.approx(1.5)
    assert scores.codebook_usage_and_entropy(np.array([5, 5, 5, 5]))[1] == pytest.approx(2.0)


def test_psnr_and_ssim_equal_skimage():
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:40, 0:48] / 40.0
    clean = np.stack([np.sin(3 * x + c) * np.cos(2 * y) * 0.4 + 0.5 for c in range(3)], axis=-1)
    noisy = np.clip(clean + rng.normal(scale=0.05, size=clean.shape), 0, 1)
    batch = np.stack([clean, noisy]).astype(np.float32)
    targets = np.stack([noisy, clean]).astype(np.float32)
    ours_psnr = np.asarray(scores.psnr(jnp.asarray(batch), jnp.asarray(targets)))
    ours_ssim = np.asarray(scores.ssim(jnp.asarray(batch), jnp.asarray(targets)))
    for i in range(2):
        np.testing.assert_allclose(
            ours_psnr[i], peak_signal_noise_ratio(targets[i], batch[i], data_range=1.0), rtol=1e-5
        )
        reference = structural_similarity(
            batch[i],
            targets[i],
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        np.testing.assert_allclose(ours_ssim[i], reference, atol=1e-5)
    assert float(scores.ssim(jnp.asarray(batch[:1]), jnp.asarray(batch[:1]))[0]) == pytest.approx(1.0, abs=1e-6)


def test_gfid_of_samples_against_reference_statistics_of_the_same_images(tmp_path):
    from train_helpers import tiny_config

    from titok_jax.data import pipeline
    from titok_jax.tasks import evaluate

    config = tiny_config("single_stage:tiny_vq", **{"data.eval_num_examples": 8})
    summary = evaluate.reference_statistics(config, str(tmp_path / "ref.npz"), inception_weights="")
    assert summary["num_images"] == 8 and not summary["real_inception"]
    images = np.concatenate([b["image"][b["mask"]] for b in pipeline.make_eval_iterator(config.data, 8)])
    np.savez(tmp_path / "samples.npz", arr_0=np.round(images * 255).astype(np.uint8))
    result = evaluate.evaluate_samples(str(tmp_path / "samples.npz"), str(tmp_path / "ref.npz"), "", batch_size=8)
    assert result["num_images"] == 8
    _, sigma = fid.load_statistics(str(tmp_path / "ref.npz"))
    assert abs(result["gfid_random_inception"]) < 1e-3 * np.trace(sigma)  # the same images: ~0
    with np.load(tmp_path / "ref.npz") as data:  # the ADM keys, and our pool features for precision / recall
        assert data["mu_s"].shape == (2023,) and data["pool_features"].shape == (8, 2048)
        assert abs(result["sfid_random_inception"]) < 1e-3 * np.trace(data["sigma_s"])
    assert result["precision_random_inception"] == 1.0 and result["recall_random_inception"] == 1.0
    np.savez(tmp_path / "float.npz", arr_0=images)
    with pytest.raises(ValueError, match="uint8"):
        evaluate.evaluate_samples(str(tmp_path / "float.npz"), str(tmp_path / "ref.npz"), "")
