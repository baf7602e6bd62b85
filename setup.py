"""titok_jax: JAX/Flax training framework for TiTok 1D image tokenizers and MaskGIT generators."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="titok_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["titok_jax", "titok_jax.*", "launch"]),
    python_requires=">=3.10",
    install_requires=requirements,
    # Reading PyTorch .bin/.pth checkpoints (safetensors files need no torch).
    extras_require={"torch": ["torch==2.14.1"]},
)
