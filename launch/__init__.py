"""Launchers: the same titok_jax command on every process of a TPU pod, a SLURM job or one machine; sweeps."""
