"""PSF-Attn (Khalitov et al.): a product of sparse chord factor matrices applied to the values."""

from attnzoo.ops.psf.chord import chord_offsets, psf_attention
from attnzoo.ops.psf.naive import naive_psf_attention

__all__ = ["chord_offsets", "naive_psf_attention", "psf_attention"]
