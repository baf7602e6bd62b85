"""Released checkpoints by hub name, never over the network: `from_pretrained` goes through the real
huggingface_hub client in offline mode (HF_HUB_OFFLINE=1) over a hub cache laid out here by hand, and
`export --push_to_hub` runs against an HfApi whose two network calls are replaced by recorders."""

import hashlib
import os
import subprocess
import sys

import flax.linen as nn
import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app
from flax import traverse_util
from huggingface_hub import constants as hf_constants

from titok_jax import Generator, Tokenizer, configs
from titok_jax import export as export_command
from titok_jax.convert import titok as convert_titok
from titok_jax.inference import hub
from titok_jax.inference import tokenizer as tokenizer_lib
from titok_jax.models.maskgit import maskgit_from_config
from titok_jax.models.titok import titok_from_config
from titok_jax.sampling import SamplingSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def lay_out_cache(cache: str, repo_id: str, source: str, commit: str = COMMIT, ref: str = "main") -> str:
    """The hub cache snapshot_download leaves (and reads offline): models--org--name/ with blobs/<sha256>,
    refs/<ref> holding the commit, and snapshots/<commit>/<file> linked to its blob; -> the snapshot dir."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    for folder, _, names in os.walk(source):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            with open(blob, "wb") as f:
                f.write(data)
            link = os.path.join(snapshot, os.path.relpath(os.path.join(folder, name), source))
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", ref), "w") as f:
        f.write(commit)
    return snapshot


def _flat(params) -> dict:
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def assert_same_params(actual, expected) -> None:
    actual, expected = _flat(actual), _flat(expected)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(actual[key]), np.asarray(value), err_msg=key)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> str:
    """HF_HUB_OFFLINE=1 and HF_HOME in tmp_path; the client read both at import, so its constants follow.
    Offline, any request the client tried would raise instead of reaching the network. -> the hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cache = str(tmp_path / "hf" / "hub")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", cache)
    return cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, variables, directory): the tiny VQ tokenizer with random weights in the official hub layout."""
    config = configs.load_config("experiments/titok_single_stage.py:tiny_vq")
    model = titok_from_config(config.model)
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    variables = jax.device_get(nn.meta.unbox(boxed))
    directory = str(tmp_path_factory.mktemp("tiny") / "hub")
    convert_titok.save_hub_tokenizer(model, variables, directory, allow_custom_sizes=True)
    return model, variables, directory


def _images(count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(count, 32, 32, 3)).astype(np.float32)


def test_from_pretrained_reads_the_offline_hub_cache_and_encodes_like_the_written_weights(offline, tiny):
    model, variables, directory = tiny
    snapshot = lay_out_cache(offline, "org/titok_tiny", directory)

    tokenizer = Tokenizer.from_pretrained("org/titok_tiny")

    assert os.path.realpath(tokenizer.source) == os.path.realpath(snapshot)
    assert tokenizer.metadata["hub_repo"] == "org/titok_tiny"
    assert (tokenizer.num_tokens, tokenizer.codebook_size) == (16, 256)
    assert_same_params(tokenizer.host_variables()["params"], variables["params"])
    tokens = tokenizer.encode(_images())
    expected = np.asarray(tokenizer_lib.encode(model, variables, jnp.asarray(_images())))
    assert tokens.dtype == np.int32 and tokens.shape == (3, 16)
    np.testing.assert_array_equal(tokens, expected)


def test_from_pretrained_takes_a_revision_and_a_cache_dir(offline, tiny, tmp_path):
    _, variables, directory = tiny
    cache_dir = str(tmp_path / "elsewhere")
    other = "fedcba9876543210fedcba9876543210fedcba98"
    lay_out_cache(cache_dir, "org/titok_tiny", directory, commit=other, ref="v1")

    by_tag = Tokenizer.from_pretrained("org/titok_tiny", revision="v1", cache_dir=cache_dir)
    by_commit = Tokenizer.from_pretrained("org/titok_tiny", revision=other, cache_dir=cache_dir)

    assert os.path.basename(by_tag.source) == os.path.basename(by_commit.source) == other
    assert_same_params(by_commit.host_variables()["params"], variables["params"])
    with pytest.raises(FileNotFoundError, match=r"'org/titok_tiny' is not \(fully\) in the hub cache"):
        Tokenizer.from_pretrained("org/titok_tiny", cache_dir=cache_dir)  # no refs/main there


def test_a_repo_missing_from_the_offline_cache_is_named_with_the_fix(offline):
    with pytest.raises(FileNotFoundError) as error:
        Tokenizer.from_pretrained("yucornetto/tokenizer_titok_l32_imagenet")
    message = str(error.value)
    assert message == (
        f"Hub repo 'yucornetto/tokenizer_titok_l32_imagenet' is not (fully) in the hub cache {offline} and "
        "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to download it once, or pass a local directory."
    )


def test_a_local_directory_is_loaded_without_the_hub(tiny, monkeypatch):
    _, variables, directory = tiny

    def no_hub(*args, **kwargs):
        raise AssertionError("a local directory must not reach the hub client")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    tokenizer = Tokenizer.from_pretrained(directory)
    assert tokenizer.source == directory and "hub_repo" not in tokenizer.metadata
    assert_same_params(tokenizer.host_variables()["params"], variables["params"])
    with pytest.raises(FileNotFoundError, match=r"No file or directory './tokenizer_titok_l32_imagenet'"):
        Tokenizer.from_pretrained("./tokenizer_titok_l32_imagenet")


def test_without_huggingface_hub_a_name_asks_to_install_it_and_a_local_directory_still_loads(tiny, monkeypatch):
    _, _, directory = tiny
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    with pytest.raises(ImportError, match=r"needs huggingface_hub: pip install huggingface_hub$"):
        Tokenizer.from_pretrained("org/titok_tiny")
    assert Tokenizer.from_pretrained(directory).num_tokens == 16


def test_the_environment_variables_alone_point_the_client_at_the_cache(tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HOME as a user sets them, read by a fresh client (no patched constants)."""
    source = tmp_path / "files"
    source.mkdir()
    (source / "config.json").write_text("{}")
    snapshot = lay_out_cache(str(tmp_path / "home" / "hub"), "org/name", str(source))
    code = "from titok_jax.inference import hub; print(hub.resolve('org/name', ['config.json']))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"), "PYTHONPATH": REPO}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == snapshot


@pytest.mark.parametrize(
    ("in_repo", "asked"),
    [
        (["config.json", "model.safetensors"], [tokenizer_lib.HUB_FILES]),
        (["config.json"], [tokenizer_lib.HUB_FILES, ["pytorch_model.bin"]]),  # .bin only without safetensors
    ],
)
def test_only_the_files_the_loader_reads_are_asked_for(monkeypatch, tmp_path, in_repo, asked):
    """What an online snapshot_download is asked for (a recorder stands in for the download)."""
    calls = []

    def snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append(list(allow_patterns))
        for name in in_repo:
            (tmp_path / name).write_text("{}")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    directory = hub.resolve("org/name", tokenizer_lib.HUB_FILES, tokenizer_lib.HUB_FALLBACKS, "v1", "cache")
    assert directory == str(tmp_path)
    assert calls == [list(files) for files in asked]
    assert tokenizer_lib.HUB_FILES == (
        "titok_jax_bundle.json",
        "params.safetensors",
        "config.json",
        "model.safetensors",
    )


def test_a_hub_repo_without_titok_files_is_refused(offline, tmp_path):
    source = tmp_path / "files"
    source.mkdir()
    (source / "README.md").write_text("not a checkpoint")
    lay_out_cache(offline, "org/readme_only", str(source))
    with pytest.raises(FileNotFoundError, match=r"'org/readme_only' holds none of .*config.json.*not a TiTok"):
        Tokenizer.from_pretrained("org/readme_only")


@pytest.fixture(scope="module")
def generator_bundle(tiny, tmp_path_factory):
    """(generator variables, bundle directory): the tiny generator with its tiny tokenizer inside."""
    model, variables, directory = tiny
    config = configs.load_config("experiments/maskgit_generator.py:tiny")
    generator_model = maskgit_from_config(config.model)
    ids, labels = jnp.zeros((1, generator_model.num_tokens), jnp.int32), jnp.zeros((1,), jnp.int32)
    generator_variables = jax.device_get(
        nn.meta.unbox(jax.jit(generator_model.init)(jax.random.PRNGKey(1), ids, labels))
    )
    tokenizer = Tokenizer(model, variables, source=directory)
    bundle = str(tmp_path_factory.mktemp("generator") / "bundle")
    settings = SamplingSettings(num_steps=4)
    Generator(generator_model, generator_variables, tokenizer, settings, source="tiny").save_bundle(bundle)
    return generator_variables, bundle


def test_generator_from_pretrained_reads_a_bundle_with_its_tokenizer_or_a_named_one(offline, tiny, generator_bundle):
    _, variables, directory = tiny
    generator_variables, bundle = generator_bundle
    lay_out_cache(offline, "org/generator_tiny", bundle)
    lay_out_cache(offline, "org/titok_tiny", directory)

    own = Generator.from_pretrained("org/generator_tiny")
    named = Generator.from_pretrained("org/generator_tiny", tokenizer="org/titok_tiny")

    assert own.metadata["hub_repo"] == "org/generator_tiny" and own.settings.num_steps == 4
    assert_same_params(own.variables["params"], generator_variables["params"])
    assert_same_params(own.tokenizer.host_variables()["params"], variables["params"])
    assert "hub_repo" not in own.tokenizer.metadata  # the bundle's own tokenizer
    assert named.tokenizer.metadata["hub_repo"] == "org/titok_tiny"
    assert_same_params(named.tokenizer.host_variables()["params"], variables["params"])


def test_an_official_generator_by_name_needs_its_tokenizer(offline, tmp_path):
    source = tmp_path / "official"
    source.mkdir()
    (source / "config.json").write_text("{}")  # refused before its config or weights are read
    lay_out_cache(offline, "org/generator_official", str(source))
    with pytest.raises(ValueError, match=r"'org/generator_official' is an official generator; pass tokenizer="):
        Generator.from_pretrained("org/generator_official")


# ---- export --push_to_hub ---------------------------------------------------------------------


@pytest.fixture
def hub_calls(monkeypatch) -> list:
    """HfApi's create_repo / upload_folder replaced by recorders (no network); online mode."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://hub.invalid/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return None

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def _fake_export(monkeypatch, written: list) -> None:
    """The export step itself (tested in tests/integration/test_export.py) as a stub that writes a bundle."""

    def export(config, workdir, output, *args):
        os.makedirs(output)
        with open(os.path.join(output, "titok_jax_bundle.json"), "w") as f:
            f.write("{}")
        written.append(output)
        return {"output": output, "format": "bundle"}

    monkeypatch.setattr(export_command.export, "export", export)


def test_export_pushes_the_written_folder_to_the_named_repo(hub_calls, monkeypatch, tmp_path):
    written = []
    _fake_export(monkeypatch, written)
    output = str(tmp_path / "export")
    options = export_command.Options(workdir="run", output=output, push_to_hub="org/titok_tiny", private=True)

    summary = export_command.run(object(), options)

    assert written == [output]
    assert [(name, repo) for name, repo, _ in hub_calls] == [
        ("create_repo", "org/titok_tiny"),
        ("upload_folder", "org/titok_tiny"),
    ]
    assert hub_calls[0][2] == {"private": True, "exist_ok": True}
    assert hub_calls[1][2]["folder_path"] == output
    assert summary["hub"] == {"repo_id": "org/titok_tiny", "url": "https://hub.invalid/org/titok_tiny", "private": True}


def test_a_failed_export_pushes_nothing(hub_calls, tmp_path):
    output = tmp_path / "export"
    output.mkdir()
    (output / "stale.txt").write_text("an earlier export")  # a non-empty --output without --overwrite
    options = export_command.Options(
        official_generator="generator/", tokenizer="tokenizer/", output=str(output), push_to_hub="org/titok_tiny"
    )
    with pytest.raises(FileExistsError, match=r"is not empty; choose a new directory or pass overwrite"):
        export_command.run(None, options)
    assert hub_calls == []


@pytest.mark.parametrize(
    ("repo_id", "offline_mode", "error", "message"),
    [
        ("titok_tiny", False, ValueError, r"'titok_tiny' is not a hub repo id: name it as org/name"),
        ("org/bad name", False, ValueError, r"'org/bad name' is not a valid hub repo id"),
        ("org/titok_tiny", True, ConnectionError, r"HF_HUB_OFFLINE is set; unset it to push"),
    ],
)
def test_a_push_that_cannot_happen_is_refused_before_exporting(
    hub_calls, monkeypatch, tmp_path, repo_id, offline_mode, error, message
):
    written = []
    _fake_export(monkeypatch, written)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline_mode)
    options = export_command.Options(workdir="run", output=str(tmp_path / "export"), push_to_hub=repo_id)
    with pytest.raises(error, match=message):
        export_command.run(object(), options)
    assert written == [] and hub_calls == []


def test_private_without_a_repo_is_a_usage_error(tmp_path):
    options = export_command.Options(workdir="run", output=str(tmp_path / "export"), private=True)
    with pytest.raises(app.UsageError, match=r"--private applies to --push_to_hub=org/name"):
        export_command.run(object(), options)


def test_a_refused_push_asks_to_log_in(monkeypatch, tmp_path):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    def create_repo(self, repo_id, **kwargs):
        response = httpx2.Response(401, request=httpx2.Request("POST", "https://hub.invalid/api/repos/create"))
        raise HfHubHTTPError("401 Unauthorized", response=response)

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    with pytest.raises(PermissionError, match=r"refused the push to 'org/titok_tiny' \(HTTP 401\): log in"):
        hub.push(str(tmp_path), "org/titok_tiny")
