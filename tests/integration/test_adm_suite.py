"""The ADM suite end to end on the random FID Inception: a reference .npz in the ADM layout (mu, sigma, mu_s,
sigma_s, arr_0) is read as ADM reads it, and samples score gFID, sFID, IS, precision and recall, with the
protocol recorded."""

import json

import numpy as np
import pytest

from titok_jax import evaluate as evaluate_command
from titok_jax import sharding as sh
from titok_jax.data import synthetic
from titok_jax.evaluation import adm, precision_recall, scores, tokenizer_eval
from titok_jax.tasks import evaluate

BATCH = 8


@pytest.fixture(scope="module")
def image_sets():
    """Two sets of 8 synthetic 32 px images (uint8), and their features through the random Inception."""
    shapes = synthetic.SyntheticShapes(num_examples=16, image_size=32, seed=3)
    images = np.stack([np.round(shapes[i]["image"] * 255).astype(np.uint8) for i in range(16)])
    variables = tokenizer_eval.random_inception_variables()
    mesh = sh.make_mesh(-1, 1, 1)
    first, second = images[:8], images[8:]
    return first, second, [adm.image_set_features(x, variables, mesh, BATCH) for x in (first, second)]


def test_samples_against_an_adm_reference_batch(image_sets, tmp_path):
    first, second, (first_features, second_features) = image_sets
    assert first_features.spatial.dim == 2023 and first_features.pool_features.shape == (8, 2048)
    # An ADM reference batch whose keys come from different sets, so each metric shows which keys it read:
    # mu / sigma of the first set's pool features, mu_s / sigma_s of the second set's spatial features, and the
    # first set's images as arr_0 (precision / recall run them through the network, as ADM does).
    mu, sigma = first_features.pool.mean_and_covariance()
    mu_s, sigma_s = second_features.spatial.mean_and_covariance()
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, arr_0=first)
    np.savez(tmp_path / "first.npz", arr_0=first)
    np.savez(tmp_path / "second.npz", arr_0=second)

    on_first = evaluate.evaluate_samples(str(tmp_path / "first.npz"), str(tmp_path / "ref.npz"), "", BATCH)
    on_second = evaluate.evaluate_samples(str(tmp_path / "second.npz"), str(tmp_path / "ref.npz"), "", BATCH)
    pool_scale, spatial_scale = np.trace(sigma), np.trace(sigma_s)
    assert abs(on_first["gfid_random_inception"]) < 1e-3 * pool_scale  # mu / sigma are the first set's
    assert on_second["gfid_random_inception"] > 0.05 * pool_scale
    assert abs(on_second["sfid_random_inception"]) < 1e-3 * spatial_scale  # mu_s / sigma_s are the second's
    assert on_first["sfid_random_inception"] > 0.05 * spatial_scale
    assert on_first["precision_random_inception"] == 1.0 and on_first["recall_random_inception"] == 1.0
    expected = precision_recall.precision_recall(first_features.pool_features, second_features.pool_features)
    assert (on_second["precision_random_inception"], on_second["recall_random_inception"]) == expected
    assert on_second["is_random_inception"] == pytest.approx(scores.adm_inception_score(second_features.logits))
    protocol = on_second["protocol"]
    assert protocol["num_samples"] == 8 and protocol["num_reference_features"] == 8
    assert protocol["reference_sha256"] == adm.file_sha256(str(tmp_path / "ref.npz"))
    assert "random" in protocol["inception_weights"] and "2023" in protocol["sfid_features"]


def test_references_without_spatial_statistics_or_images_give_what_they_can(image_sets, tmp_path):
    _, second, (first_features, _) = image_sets
    mu, sigma = first_features.pool.mean_and_covariance()
    np.savez(tmp_path / "pool_only.npz", mu=mu, sigma=sigma)  # pytorch-fid's layout
    np.savez(tmp_path / "samples.npz", arr_0=second)
    results = evaluate.evaluate_samples(str(tmp_path / "samples.npz"), str(tmp_path / "pool_only.npz"), "", BATCH)
    assert "gfid_random_inception" in results and "is_random_inception" in results
    assert not any(k.startswith(("sfid", "precision", "recall")) for k in results)
    np.savez(tmp_path / "half.npz", mu=mu, sigma=sigma, mu_s=np.zeros(2023))
    with pytest.raises(ValueError, match="only one of mu_s / sigma_s"):
        evaluate.evaluate_samples(str(tmp_path / "samples.npz"), str(tmp_path / "half.npz"), "", BATCH)
    np.savez(tmp_path / "wrong.npz", mu=mu, sigma=sigma, mu_s=np.zeros(7), sigma_s=np.eye(7))
    with pytest.raises(ValueError, match=r"mu_s has shape \(7,\)"):
        evaluate.evaluate_samples(str(tmp_path / "samples.npz"), str(tmp_path / "wrong.npz"), "", BATCH)


def test_the_evaluate_command_reports_the_five_numbers_and_the_protocol(image_sets, tmp_path):
    _, second, (first_features, _) = image_sets
    adm.write_reference(str(tmp_path / "ours.npz"), first_features)  # our reference layout: pool_features
    with np.load(tmp_path / "ours.npz") as data:
        assert {"mu", "sigma", "mu_s", "sigma_s", "pool_features"} <= set(data.keys())
    np.savez(tmp_path / "samples.npz", arr_0=second)
    options = evaluate_command.Options(
        samples=str(tmp_path / "samples.npz"), reference_statistics=str(tmp_path / "ours.npz"), batch_size=BATCH
    )
    printed = json.loads(json.dumps(evaluate_command.run(None, options)))  # what the command prints
    for key in ("gfid", "sfid", "is", "precision", "recall"):
        assert np.isfinite(printed[f"{key}_random_inception"]), key
    assert printed["protocol"]["num_reference_features"] == 8
