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
    extras_require={
        # Reading PyTorch .bin/.pth checkpoints (safetensors files need no torch).
        "torch": ["torch==2.14.1"],
        # --config.logging.wandb=True: a Weights & Biases run beside TensorBoard.
        "wandb": ["wandb==0.31.0"],
        # TensorBoard's Profile tab, which opens the trace every run writes (WORKDIR/plugins/profile).
        "profile": ["tensorboard-plugin-profile==2.24.2"],
    },
)
