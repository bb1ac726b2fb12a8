"""Whole-model builders of :func:`attnzoo.official.from_official_model`, one module per official code base."""
