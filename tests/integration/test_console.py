"""A user's mistakes at the command line: one line naming the problem and the fix, exit code 2, no traceback,
nothing created where the command was pointed; --print_config prints the resolved config."""

import os
import subprocess
import sys

import pytest
from helpers import EXPERIMENTS

TINY = f"--config={EXPERIMENTS / 'titok_single_stage.py'}:tiny_vq"


def _start(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", *args]
    return subprocess.Popen(command, cwd=EXPERIMENTS.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """Every mistake's command run at once (each pays the import time; in parallel they pay it once)."""
    root = tmp_path_factory.mktemp("mistakes")
    (root / "a_file").write_text("not a directory")
    (root / "empty").mkdir()
    cases = {
        "typo": ("titok_jax.main", f"--workdir={root / 'typo'}", "--config.optimizer.lerning_rate=1"),
        "typo_in_file": ("titok_jax.main", f"--workdir={root / 'typo2'}", TINY, "--config.model.encoder_widht=8"),
        "bad_value": ("titok_jax.main", f"--workdir={root / 'bad'}", "--config.total_steps=many"),
        "missing_config": ("titok_jax.main", f"--workdir={root / 'missing'}", "--config=experiments/nope.py"),
        "workdir_is_a_file": ("titok_jax.main", f"--workdir={root / 'a_file'}"),
        "empty_tokenizer": ("titok_jax.pretokenize", TINY, f"--tokenizer={root / 'empty'}", f"--output={root / 'out'}"),
        "no_generator": ("titok_jax.sample", f"--workdir={root / 'no_generator'}"),
        "print_config": ("titok_jax.main", f"--workdir={root / 'printed'}", "--print_config", "--config.total_steps=7"),
    }
    running = {name: _start(*args) for name, args in cases.items()}
    results = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=600)
        results[name] = (process.returncode, out.decode(), err.decode())
    return root, results


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "typo",
            "--config.optimizer.lerning_rate: optimizer has no field 'lerning_rate'; did you mean 'learning_rate'",
        ),
        (
            "typo_in_file",
            "--config.model.encoder_widht: model has no field 'encoder_widht'; did you mean 'encoder_width'",
        ),
        ("bad_value", "flag --config.total_steps=many: invalid literal for int() with base 10: 'many'"),
        ("missing_config", "No such file or directory: 'experiments/nope.py'"),
        ("workdir_is_a_file", "a_file is a file; give a directory for the run's checkpoints and logs."),
        ("empty_tokenizer", "empty' holds no checkpoint; train the tokenizer first"),
        ("no_generator", "no_generator does not exist."),
    ],
)
def test_a_mistake_is_one_line_exit_2_and_creates_nothing(mistakes, case, message):
    root, results = mistakes
    code, _, err = results[case]
    ours = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert code == 2, err[-2000:]
    assert len(ours) == 1 and message in ours[0], err[-2000:]
    assert "Traceback" not in err
    assert sorted(os.listdir(root)) == ["a_file", "empty"]  # no workdir, no output
    assert os.listdir(root / "empty") == []


def test_print_config_prints_the_resolved_config_and_trains_nothing(mistakes):
    root, results = mistakes
    code, out, _ = results["print_config"]
    assert code == 0 and "total_steps: 7" in out and "variant: tiny_vq" in out
    assert not (root / "printed").exists()
