"""tokens.npz -> images: names stored in the file never choose a place outside the output folder."""

import os
import re

import numpy as np
import pytest

from titok_jax.inference.folders import detokenize, safe_relative_name


class _GreyTokenizer:
    """Decodes every token row to a mid-grey 8x8 image; counts calls so a test sees nothing was decoded."""

    def __init__(self):
        self.decoded_rows = 0

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        self.decoded_rows += len(tokens)
        return np.full((len(tokens), 8, 8, 3), 0.5, np.float32)


def _tokens_file(path, names) -> str:
    np.savez(path, tokens=np.zeros((len(names), 4), np.int32), files=np.asarray(names))
    return str(path)


def _all_files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize("bad", ["../evil", "/abs/evil", "sub/../../evil", "a\\..\\evil", "", ".", "sub//x.png"])
def test_detokenize_refuses_names_outside_the_output_folder_and_writes_nothing(tmp_path, bad):
    tokens_file = _tokens_file(tmp_path / "tokens.npz", ["ok.png", bad])
    output = tmp_path / "work" / "out"
    tokenizer = _GreyTokenizer()
    with pytest.raises(
        ValueError, match=rf"entry 1 of 'files' is {re.escape(repr(bad))}.*Fix the names or drop the 'files'"
    ):
        detokenize(tokenizer, tokens_file, str(output))
    assert tokenizer.decoded_rows == 0
    assert not output.exists()  # refused before the first write: not even ok.png or the folder
    assert _all_files(tmp_path) == ["tokens.npz"]


def test_detokenize_refuses_abs_and_parent_names_together(tmp_path):
    tokens_file = _tokens_file(tmp_path / "tokens.npz", ["../evil", "/abs/evil"])
    with pytest.raises(ValueError, match=r"entry 0 of 'files' is '\.\./evil'"):
        detokenize(_GreyTokenizer(), tokens_file, str(tmp_path / "out"))
    assert _all_files(tmp_path) == ["tokens.npz"]
    assert not os.path.exists("/abs/evil.png")


def test_detokenize_writes_plain_and_nested_names_inside_the_output(tmp_path):
    tokens_file = _tokens_file(tmp_path / "tokens.npz", ["im0.png", "sub/im1.jpg", "..hidden.png"])
    tokenizer = _GreyTokenizer()
    summary = detokenize(tokenizer, tokens_file, str(tmp_path / "out"))
    assert summary["images"] == 3 and tokenizer.decoded_rows == 3
    written = _all_files(tmp_path / "out")
    assert written == [
        "grid.png",
        "reconstructions/..hidden.png",
        "reconstructions/im0.png",
        "reconstructions/sub/im1.png",
    ]


def test_detokenize_refuses_a_names_array_that_does_not_match_the_tokens(tmp_path):
    tokens_file = tmp_path / "tokens.npz"
    np.savez(tokens_file, tokens=np.zeros((3, 4), np.int32), files=np.asarray(["a.png", "b.png"]))
    with pytest.raises(ValueError, match=r"'files' of shape \(2,\) for 3 token rows"):
        detokenize(_GreyTokenizer(), str(tokens_file), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_safe_relative_name():
    assert [safe_relative_name(n) for n in ("a.png", "sub/a.png", "a..b.png", "..a")] == [True] * 4
    bad = ("../a", "a/..", "/a", "./a", "a/./b", "a//b", "a/", "", "a\\b", "a\0b")
    assert [safe_relative_name(n) for n in bad] == [False] * len(bad)
