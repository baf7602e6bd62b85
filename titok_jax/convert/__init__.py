"""Converters between official PyTorch / JAX checkpoints and titok_jax parameter trees.

Submodules are entry points too (`python -m titok_jax.convert.perceptual`), so
this package imports none of them eagerly.
"""
