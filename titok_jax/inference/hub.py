"""Released checkpoints by name: a Hugging Face hub repo id -> a local directory the loaders read, and back.

  directory = resolve("yucornetto/tokenizer_titok_l32_imagenet", files=("config.json", "model.safetensors"))
  push("/data/export", "org/name", private=True)        # python -m titok_jax.export ... --push_to_hub=org/name

`resolve` downloads into huggingface_hub's cache (HF_HOME / HF_HUB_CACHE, or `cache_dir`), or reads that
cache alone when the hub is out of reach (HF_HUB_OFFLINE=1, no network). It fetches only the files the
caller's loader reads, by exact name: a repo may hold other large files (old .bin pickles, other
checkpoints). A path that exists locally is returned as is. huggingface_hub is imported on first use, so
loading local files never needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

INSTALL_HINT = "pip install huggingface_hub"


def _client() -> Any:
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors, utils  # noqa: F401  (submodules: attributes once imported)
    except ImportError:
        raise ImportError(f"Loading or pushing checkpoints by hub name needs huggingface_hub: {INSTALL_HINT}") from None
    return huggingface_hub


def _looks_local(name: str) -> bool:
    """A path the user meant as local (absolute, relative with ./ or ~, a trailing or repeated slash):
    its absence is a missing file, not a hub name to look up."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def check_push_target(repo_id: str) -> None:
    """Refuses a malformed repo id, a missing huggingface_hub or offline mode before anything slow runs."""
    if repo_id.count("/") != 1:
        raise ValueError(f"{repo_id!r} is not a hub repo id: name it as org/name (e.g. yourname/titok_tiny).")
    hf = _client()
    try:
        hf.utils.validate_repo_id(repo_id)
    except hf.errors.HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid hub repo id ({error}); name it as org/name.") from None
    if hf.constants.is_offline_mode():
        raise ConnectionError(f"Cannot push to {repo_id!r}: HF_HUB_OFFLINE is set; unset it to push.")


def resolve(
    source: str | os.PathLike,
    files: Sequence[str],
    fallbacks: Mapping[str, str] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """A local path as is; else hub repo `source` at `revision` -> its snapshot directory holding those of
    `files` the repo has. A file of `fallbacks` ({wanted: substitute}) that the repo lacks is replaced by
    its substitute (pytorch_model.bin only where there is no model.safetensors: never both downloaded)."""
    name = os.fspath(source)
    if os.path.exists(name):
        return name
    if _looks_local(name):
        raise FileNotFoundError(f"No file or directory {name!r} (and it is no hub repo id such as org/name).")
    hf = _client()
    try:
        hf.utils.validate_repo_id(name)
    except hf.errors.HFValidationError:
        raise FileNotFoundError(f"{name!r} is neither a local path nor a hub repo id (org/name).") from None
    directory = _download(hf, name, files, revision, cache_dir)
    substitutes = [alt for wanted, alt in (fallbacks or {}).items() if not _has(directory, wanted)]
    if substitutes:
        directory = _download(hf, name, substitutes, revision, cache_dir)
    expected = [*files, *(fallbacks or {}).values()]
    if not any(_has(directory, f) for f in expected):
        raise FileNotFoundError(
            f"Hub repo {name!r} holds none of {', '.join(expected)}: it is not a TiTok checkpoint titok_jax reads."
        )
    return directory


def _has(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))


def _download(hf: Any, repo_id: str, files: Sequence[str], revision: str | None, cache_dir: Any) -> str:
    """snapshot_download of exactly `files`, its failures as one line naming the repo and the fix."""
    errors = hf.errors
    try:
        return hf.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(files))
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(
            f"Hub repo {repo_id!r} has no revision {revision!r}: pass an existing branch, tag or commit."
        ) from None
    except errors.RepositoryNotFoundError:  # gated and private repos without access land here too
        raise FileNotFoundError(
            f"No hub repo {repo_id!r} (an unknown name, or private without access): check the name, log in "
            "(hf auth login, or HF_TOKEN) for a private one, or pass a local directory."
        ) from None
    except errors.LocalEntryNotFoundError as error:  # offline or unreachable, and not (fully) in the cache
        offline = hf.constants.is_offline_mode()
        why, fix = (
            ("HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it once")
            if offline
            else ("the hub could not be reached", "connect to the hub once to download it")
        )
        cache = os.fspath(cache_dir) if cache_dir is not None else hf.constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f"Hub repo {repo_id!r} is not (fully) in the hub cache {cache} and {why}: {fix}, or pass a local directory."
        ) from (None if offline else error)  # a connection failure's cause is worth reading; offline's is not


def push(folder: str | os.PathLike, repo_id: str, private: bool = False) -> dict[str, Any]:
    """Uploads every file of `folder` to model repo `repo_id` (created if new; `private` applies then);
    -> {"repo_id", "url", "private"}."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Nothing to push: {folder!r} is not a directory.")
    check_push_target(repo_id)
    hf = _client()
    api = hf.HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=f"Upload {os.path.basename(folder)} (titok_jax export)"
        )
    except hf.errors.HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise PermissionError(
                f"The hub refused the push to {repo_id!r} (HTTP {status}): log in with a write token "
                "(hf auth login, or HF_TOKEN) that may write to that org."
            ) from error
        raise
    return {"repo_id": repo_id, "url": str(url), "private": private}
