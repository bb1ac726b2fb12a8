"""Figures: training curves (the compare job, ``attnzoo curves``) and attention-weight maps of trained models.

Plotting needs matplotlib (``pip install 'attnzoo[plot]'``); without it the functions raise
``ImportError`` with that instruction.
"""

from attnzoo.viz.plots import plot_attention_maps, plot_curves, require_matplotlib

__all__ = ["plot_attention_maps", "plot_curves", "require_matplotlib"]
