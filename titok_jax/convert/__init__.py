"""Converters between official PyTorch / JAX checkpoints and titok_jax parameter trees."""
