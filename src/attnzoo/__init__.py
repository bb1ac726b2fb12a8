"""attnzoo: efficient attention for long sequences, one API for many mechanisms.

``attnzoo.options(name)`` is the options dataclass of a mechanism (the helpers of the
``attnzoo.options`` module are re-exported here: ``options_from_mapping``, ``options_to_dict``,
``parse_option_string``, ``add_arguments``, ``options_from_args``).

>>> import torch, attnzoo
>>> attn = attnzoo.build("local", dim=64, num_heads=4, window_size=16)
>>> attn(torch.randn(2, 100, 64)).shape
torch.Size([2, 100, 64])
"""

from attnzoo import functional, mechanisms  # noqa: F401  (registers every mechanism; attnzoo.functional like torch.nn.functional)
from attnzoo.official import from_official, from_official_model, load_official
from attnzoo.options import (
    add_arguments,
    options_from_args,
    options_from_mapping,
    options_to_dict,
    parse_option_string,
)
from attnzoo.registry import Capabilities, MechanismSpec, available, build, get_spec, options

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "MechanismSpec",
    "__version__",
    "add_arguments",
    "available",
    "build",
    "from_official",
    "from_official_model",
    "get_spec",
    "load_official",
    "options",
    "options_from_args",
    "options_from_mapping",
    "options_to_dict",
    "parse_option_string",
]
