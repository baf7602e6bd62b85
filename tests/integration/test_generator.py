"""Generator recipe on the shared driver: token shards, on-the-fly tokens, class dropout, sampling CLI, refusals."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SINGLE_STAGE
from tensorboard.backend.event_processing import event_accumulator
from train_helpers import build_recipe, tiny_config, tiny_generator_config, write_tokenizer

from titok_jax import Tokenizer, recipes
from titok_jax.data import pipeline, tokens, transforms
from titok_jax.evaluation import fid
from titok_jax.inference import pretokenize
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.tasks import evaluate, sample


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """(tokenizer workdir, pretokenized dir with center + flip views of 64 images in 2 shards)."""
    root = tmp_path_factory.mktemp("generator")
    config = tiny_config("single_stage:tiny_vq")
    config.data.num_examples = 64
    workdir, tokens_dir = str(root / "tokenizer"), str(root / "tokens")
    write_tokenizer(config, workdir)
    pretokenize.pretokenize(config, workdir, tokens_dir, augmentation="flip", shard_size=32, batch_size=16)
    return workdir, tokens_dir


def test_token_batches_pick_views_and_resume(tokenizer):
    _, tokens_dir = tokenizer
    config = tiny_generator_config(*tokenizer)
    records = [
        r for i in range(2) for r in pretokenize.read_shard(os.path.join(tokens_dir, pretokenize.shard_name(i, 2)))
    ]
    by_index = {r["index"]: r for r in records}
    iterator = tokens.make_token_train_iterator(tokens_dir, 16, seed=3, num_classes=10, loader_config=config.data)
    batches = [next(iterator) for _ in range(8)]  # 2 epochs
    assert batches[0]["tokens"].shape == (16, 16) and batches[0]["tokens"].dtype == np.int32
    # Every example's tokens are one of its stored views, with its label; both views get drawn.
    drawn, seen = set(), set()
    for batch in batches:
        for row, label, index in zip(batch["tokens"], batch["label"], batch["index"], strict=True):
            record = by_index[int(index)]
            views = [v for v in range(2) if np.array_equal(record["tokens"][v], row)]
            assert views and label == record["label"]
            seen.add(int(index))
            if not np.array_equal(*record["tokens"]):
                drawn.update(views)
    assert drawn == {0, 1} and seen == set(range(64))
    # The iterator state restores the exact continuation.
    state = iterator.get_state()
    expected = [next(iterator)["tokens"] for _ in range(2)]
    resumed = tokens.make_token_train_iterator(tokens_dir, 16, seed=3, num_classes=10, loader_config=config.data)
    resumed.set_state(state)
    np.testing.assert_array_equal(np.stack([next(resumed)["tokens"] for _ in range(2)]), np.stack(expected))


def test_trains_on_shards_then_samples_deterministically(tokenizer, tmp_path):
    config = tiny_generator_config(*tokenizer)
    workdir = str(tmp_path / "generator")
    metrics = recipes.train(config, workdir)  # 8 fake devices, data-parallel
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["masked_token_accuracy"] <= 1.0
    assert 0.0 < metrics["masked_fraction"] < 1.0
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))

    first = sample.sample(config, workdir, num_images=20, output_dir=str(tmp_path / "a"), batch_size=8, seed=1)
    sample.sample(config, workdir, num_images=20, output_dir=str(tmp_path / "b"), batch_size=8, seed=1)
    sample.sample(config, workdir, num_images=20, output_dir=str(tmp_path / "c"), batch_size=8, seed=2)
    a, b, c = (np.load(tmp_path / d / "samples.npz") for d in "abc")
    assert first["checkpoint_step"] == 4
    assert a["arr_0"].shape == (20, 32, 32, 3) and a["arr_0"].dtype == np.uint8  # the ADM evaluator's layout
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    assert not np.array_equal(a["arr_0"], c["arr_0"])
    np.testing.assert_array_equal(a["labels"], np.repeat(np.arange(10), 2))
    assert os.path.exists(tmp_path / "a" / "grid.png")

    # gFID straight from the generator workdir: samples, scores against reference statistics, writes eval JSON.
    reference = str(tmp_path / "ref.npz")
    fid.save_statistics(reference, np.zeros(2048), np.eye(2048))
    results = evaluate.evaluate_generator(config, workdir, reference, num_images=8, batch_size=8)
    assert results["num_images"] == 8 and results["gfid_random_inception"] > 0
    with open(os.path.join(workdir, "eval", "step_4.json")) as f:
        written = json.load(f)
    assert written.pop("protocol") == results["protocol"] and results["protocol"]["num_samples"] == 8
    assert written == pytest.approx({k: v for k, v in results.items() if k != "protocol"})


def test_in_training_gfid_of_the_tiny_generator_reaches_tensorboard_and_json(tokenizer, tmp_path):
    overrides = {"evaluation.every": 4, "evaluation.num_images": 8, "evaluation.batch_size": 8}
    config = tiny_generator_config(*tokenizer, **overrides, **{"data.eval_num_examples": 8})
    workdir = str(tmp_path / "generator")
    metrics = recipes.train(config, workdir)
    names = ("gfid", "sfid", "is", "precision", "recall")
    for name in names:  # random Inception here: the keys say so
        assert np.isfinite(metrics[f"eval/{name}_random_inception"]), name
    assert metrics["eval/num_images"] == 8 and metrics["eval/gfid_random_inception"] > 0
    assert 0 <= metrics["eval/precision_random_inception"] <= 1 and 0 <= metrics["eval/recall_random_inception"] <= 1
    with open(os.path.join(workdir, "eval", "step_4.json")) as f:
        written = json.load(f)
    assert written == pytest.approx({k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")})
    accumulator = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    assert {f"eval/{n}_random_inception" for n in names} <= set(accumulator.Tags()["tensors"])
    # The reference (config.data's eval split: 8 images) was written once, in the ADM keys.
    with np.load(os.path.join(workdir, "eval", "reference_statistics.npz")) as data:
        assert data["mu_s"].shape == (2023,) and data["pool_features"].shape == (8, 2048)


def test_generator_evaluation_fields_are_checked(tokenizer, tmp_path):
    for overrides, message in (
        ({"evaluation.num_images": 2, "evaluation.every": 4}, "must be > 3"),
        ({"evaluation.reference": str(tmp_path / "nope.npz")}, "does not exist"),
        ({"evaluation.every": -1}, "non-negative int"),
    ):
        with pytest.raises(ValueError, match=message):
            recipes.validate(tiny_generator_config(*tokenizer, **overrides))


def test_balanced_classes_of_the_50k_protocol():
    ids = sample.balanced_class_ids(50_000, 1000)
    np.testing.assert_array_equal(np.bincount(ids), np.full(1000, 50))
    assert np.all(np.diff(ids) >= 0)


def test_on_the_fly_tokens_equal_the_tokenizers_and_train(tokenizer, tmp_path):
    workdir, _ = tokenizer
    config = tiny_generator_config(workdir, total_steps=2)
    recipe, frozen = build_recipe(config)
    source = pipeline.make_source(config.data, train=True)
    decode, crop = transforms.DecodeImage(), transforms.ResizeCenterCrop(32)
    images = jnp.asarray(np.stack([crop.map(decode.map(source[i]))["image"] for i in range(8)]))
    expected = tokenizer_lib.encode(recipe.tokenizer, frozen["tokenizer"], images)
    np.testing.assert_array_equal(recipe.tokens_of({"image": images}, frozen), expected)
    metrics = recipes.train(config, str(tmp_path / "on_the_fly"))
    assert np.isfinite(metrics["loss"])


def test_class_dropout_conditions_on_the_null_class(tokenizer):
    config = tiny_generator_config(*tokenizer)
    config.losses.class_dropout = 0.0
    recipe, frozen = build_recipe(config)
    params = recipe.init(jax.random.PRNGKey(0), recipe.example_batch()).params
    batch = {"tokens": jax.random.randint(jax.random.PRNGKey(1), (4, 16), 0, 256), "label": jnp.arange(4)}
    null_batch = {**batch, "label": jnp.full((4,), recipe.model.num_classes)}
    rng = jax.random.PRNGKey(2)
    always_dropped = build_recipe(tiny_generator_config(*tokenizer, **{"losses.class_dropout": 0.999999}))[0]
    loss_null, _ = recipe.loss(params, null_batch, rng, frozen)
    loss_dropped, _ = always_dropped.loss(params, batch, rng, frozen)
    loss_class, _ = recipe.loss(params, batch, rng, frozen)
    np.testing.assert_allclose(loss_dropped, loss_null, rtol=1e-6)
    assert abs(float(loss_class) - float(loss_null)) > 1e-6


def test_refuses_mismatched_tokenizers_and_shards_before_training(tokenizer, tmp_path):
    workdir, tokens_dir = tokenizer
    with pytest.raises(ValueError, match=r"Generator/tokenizer mismatch.*codebook_size"):
        recipes.validate(tiny_generator_config(workdir, tokens_dir, **{"model.codebook_size": 512}))
    with pytest.raises(ValueError, match=r"Generator/tokenizer mismatch.*num_tokens"):
        recipes.validate(tiny_generator_config(workdir, tokens_dir, **{"model.num_tokens": 32}))
    with pytest.raises(ValueError, match="is a VAE"):
        recipes.validate(tiny_generator_config(workdir, tokens_dir, **{"tokenizer.config": f"{SINGLE_STAGE}:tiny_vae"}))

    # Shards written by another tokenizer (same sizes, other codebook): refused before anything is written.
    other_config = tiny_config("single_stage:tiny_vq", seed=7)
    other_config.data.num_examples = 64
    other_dir, other_tokens = str(tmp_path / "other"), str(tmp_path / "other_tokens")
    write_tokenizer(other_config, other_dir)
    pretokenize.pretokenize(other_config, other_dir, other_tokens, shard_size=64, batch_size=16)
    generator_dir = tmp_path / "generator"
    with pytest.raises(ValueError, match=r"written by another tokenizer.*codebook_sha256"):
        recipes.train(tiny_generator_config(workdir, other_tokens), str(generator_dir))
    assert not generator_dir.exists()

    # Shards of a tokenizer with another codebook size: refused by the config check.
    resized = str(tmp_path / "resized")
    shutil.copytree(tokens_dir, resized)
    with open(os.path.join(resized, tokens.METADATA)) as f:
        metadata = json.load(f)
    with open(os.path.join(resized, tokens.METADATA), "w") as f:
        json.dump({**metadata, "codebook_size": 1024}, f)
    with pytest.raises(ValueError, match="codebook_size=1024 but the generator expects 256"):
        recipes.validate(tiny_generator_config(workdir, resized))

    # An unfinished pretokenization, a folder that is not one, no tokenizer: each named with its fix.
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(tokens_dir, unfinished)
    os.remove(os.path.join(unfinished, pretokenize.shard_name(1, 2)))
    with pytest.raises(FileNotFoundError, match=r"unfinished.*Rerun"):
        build_recipe(tiny_generator_config(workdir, unfinished))
    with pytest.raises(FileNotFoundError, match="not a pretokenized directory"):
        recipes.validate(tiny_generator_config(workdir, str(tmp_path)))
    with pytest.raises(ValueError, match=r"config\.tokenizer\.workdir"):
        build_recipe(tiny_generator_config(""))
    with pytest.raises(FileNotFoundError, match="not a generator workdir"):
        sample.sample(tiny_generator_config(workdir), str(tmp_path / "empty"), num_images=2)


def test_labels_outside_the_generators_classes_are_refused(tokenizer):
    _, tokens_dir = tokenizer
    config = tiny_generator_config(*tokenizer)
    iterator = tokens.make_token_train_iterator(tokens_dir, 16, seed=0, num_classes=3, loader_config=config.data)
    with pytest.raises(ValueError, match="outside the generator's num_classes=3"):
        for _ in range(4):
            next(iterator)


def _class_patterned_tokens(tokens_dir, identity, num_examples=1024, noise=0.2):
    """Shards where class c's tokens are a fixed pattern (37c + 11k mod 256), each position noised w.p. `noise`."""
    rng = np.random.default_rng(0)
    patterns = (37 * np.arange(10)[:, None] + 11 * np.arange(16)[None]) % 256
    labels = rng.integers(0, 10, num_examples)
    codes = np.where(rng.random((num_examples, 16)) < noise, rng.integers(0, 256, (num_examples, 16)), patterns[labels])
    os.makedirs(tokens_dir)
    records = [
        {"tokens": codes[i][None].astype(np.int32), "label": int(labels[i]), "index": i} for i in range(num_examples)
    ]
    tokens.write_shard(os.path.join(tokens_dir, tokens.shard_name(0, 1)), records)
    tokens.write_metadata(tokens_dir, {**identity, "views": 1, "num_shards": 1, "num_examples": num_examples})
    return patterns


def test_guided_samples_follow_their_class(tokenizer, tmp_path):
    """End to end through the driver and the sampling CLI: on tokens whose class fixes a pattern, the trained
    generator's class-c samples reproduce c's pattern (and no other class's)."""
    workdir, _ = tokenizer
    tokenizer_config = tiny_config("single_stage:tiny_vq")
    identity = Tokenizer.load(workdir, tokenizer_config).identity()
    tokens_dir = str(tmp_path / "patterned")
    patterns = _class_patterned_tokens(tokens_dir, identity)
    config = tiny_generator_config(
        workdir,
        tokens_dir,
        total_steps=200,
        batch_size=64,
        log_every=50,
        sample_every=200,
        checkpoint_every=200,
        **{"model.hidden_size": 64, "model.num_heads": 4, "model.intermediate_size": 128},
    )
    generator_dir = str(tmp_path / "generator")
    metrics = recipes.train(config, generator_dir)
    sample.sample(config, generator_dir, num_images=80, output_dir=str(tmp_path / "samples"), batch_size=80)
    samples = np.load(tmp_path / "samples" / "samples.npz")
    matches = samples["tokens"][:, None, :] == patterns[None]  # (N, classes, K)
    own = matches[np.arange(80), samples["labels"]].mean()
    others = (matches.sum(axis=1) - matches[np.arange(80), samples["labels"]]).mean() / 9
    print(f"masked-token accuracy {metrics['masked_token_accuracy']:.3f}; own pattern {own:.3f}, others {others:.3f}")
    assert metrics["masked_token_accuracy"] > 0.6  # the noise-free ceiling is ~0.8
    assert own > 0.7 and others < 0.05
