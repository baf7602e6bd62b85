"""titok_jax: JAX/Flax training of TiTok 1D image tokenizers and the generators over their tokens.

    from titok_jax import Tokenizer, Generator

Importing the package is light: `Tokenizer` and `Generator` load their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Generator", "Tokenizer"]

if TYPE_CHECKING:
    from titok_jax.inference.generator import Generator
    from titok_jax.inference.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name == "Tokenizer":
        from titok_jax.inference.tokenizer import Tokenizer

        return Tokenizer
    if name == "Generator":
        from titok_jax.inference.generator import Generator

        return Generator
    raise AttributeError(f"module 'titok_jax' has no attribute {name!r}")
