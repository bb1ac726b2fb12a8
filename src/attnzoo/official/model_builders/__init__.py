"""Whole-model builders of :func:`attnzoo.official.from_official_model`, one module per official code base."""

from attnzoo.official.model_builders import (
    butterfly_lra,  # noqa: F401  (registers "solving-lra-pathx")
    efficient_pvt,  # noqa: F401  (registers "efficient-attention-pvt")
    efficient_vit,  # noqa: F401  (registers "efficient-attention-vit")
    nystromformer_lra,  # noqa: F401  (registers "nystromformer-lra")
    psf,  # noqa: F401  (registers "sparse-factorization")
)
