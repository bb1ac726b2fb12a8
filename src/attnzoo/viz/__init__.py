"""Figures: accuracy-vs-time curves of the compare job and attention-weight maps of trained models.

Plotting needs matplotlib (``pip install 'attnzoo[plot]'``); without it the functions raise
``ImportError`` with that instruction.
"""

from attnzoo.viz.plots import plot_accuracy_vs_time, plot_attention_maps, require_matplotlib

__all__ = ["plot_accuracy_vs_time", "plot_attention_maps", "require_matplotlib"]
