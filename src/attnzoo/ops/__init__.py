"""Functional attention cores on ``(B, H, N, d)`` tensors, one sub-package per mechanism."""
