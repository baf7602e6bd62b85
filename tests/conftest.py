"""Test set-up: 8 fake CPU devices so every sharding path runs on one machine."""

import os
import pathlib
import sys

# Must happen before jax initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent XLA compilation cache shared by the test workers and the subprocesses they start
# (jax reads these variables): many tests compile the same tiny train steps (measured: 7.4 s -> 1.9 s
# for the tiny_vq step). A damaged or half-written entry is read as a miss by jax, never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/titok_jax_test_compilation_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import pytest  # noqa: E402

REFERENCES = REPO / "tests" / "references"


def pytest_configure(config):
    """The torch references (tests/references) must load before TensorFlow (pulled in by clu's metric
    writers): importing torchvision after it segfaults (checked: `import clu.metric_writers; import
    torchvision`). Only a run that includes them imports torch; pure-JAX runs (tests/unit, tests/integration)
    never do."""
    paths = [pathlib.Path(str(arg).split("::")[0]).resolve() for arg in config.args] or [pathlib.Path.cwd()]
    if any(path == REFERENCES or REFERENCES in path.parents or path in REFERENCES.parents for path in paths):
        import torchvision  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() == 8, f"tests expect 8 fake CPU devices, got {jax.devices()}"
