"""Attention modules, one file per mechanism; importing this package registers all of them.

The list is explicit (as in timm's ``models/__init__.py``) so the registry's contents are predictable.
"""

from attnzoo.mechanisms import butterfly, dilated, lara, local, none, softmax  # noqa: F401  (registration side effects)
from attnzoo.mechanisms.base import AttentionBase

__all__ = ["AttentionBase"]
