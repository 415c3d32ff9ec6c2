"""gradaudit: differential testing of hand-derived gradients against PyTorch, JAX and finite differences.

Importing gradaudit imports neither torch nor jax: the oracles load their framework on first use.
"""
__version__ = "0.1.0"
