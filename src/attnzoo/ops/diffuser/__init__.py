"""Diffuser: edge softmax on a sparse graph (local, random, global) and multi-hop diffusion."""

from attnzoo.ops.diffuser.diffusion import diffuser_attention, edge_softmax, resolve_graph
from attnzoo.ops.diffuser.fractional import (
    GRAPH_VARIANTS,
    TIED_VARIANTS,
    VARIANTS,
    diffuser_fractional_attention,
    series_coefficients,
    tied_sphere_attention,
)
from attnzoo.ops.diffuser.graph import DiffuserGraph, diffuser_graph, official_graph
from attnzoo.ops.diffuser.naive import (
    diffusion_coefficients,
    naive_diffuser_attention,
    naive_diffuser_fractional_attention,
)

__all__ = [
    "GRAPH_VARIANTS",
    "TIED_VARIANTS",
    "VARIANTS",
    "DiffuserGraph",
    "diffuser_attention",
    "diffuser_fractional_attention",
    "diffuser_graph",
    "diffusion_coefficients",
    "edge_softmax",
    "naive_diffuser_attention",
    "naive_diffuser_fractional_attention",
    "official_graph",
    "resolve_graph",
    "series_coefficients",
    "tied_sphere_attention",
]
