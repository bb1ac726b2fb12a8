"""LARA (linear randomized attention, multiple importance sampling) and the landmark segments it shares with EVA."""

from attnzoo.ops.lara.mis import MIS_TYPES, Landmarks, lara_attention, lara_landmarks, rf_log
from attnzoo.ops.lara.naive import naive_lara_attention

__all__ = ["MIS_TYPES", "Landmarks", "lara_attention", "lara_landmarks", "naive_lara_attention", "rf_log"]
