"""Whole-model builders of :func:`attnzoo.official.from_official_model`, one module per official code base."""

from attnzoo.official.model_builders import psf  # noqa: F401  (registers "sparse-factorization")
