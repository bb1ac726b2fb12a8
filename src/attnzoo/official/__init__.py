"""Official implementations: load their weights (``load_official``) or rebuild them (``from_official``).

Entries are declared next to each mechanism module with :func:`register_official`.
"""

from attnzoo.official.models import (
    from_official_model,
    official_model_doc,
    official_model_sources,
    register_official_model,
)
from attnzoo.official.registry import (
    OfficialEntry,
    from_official,
    official_entries,
    register_official,
    resolve_official,
)
from attnzoo.official.weights import load_converted, load_official

__all__ = [
    "OfficialEntry",
    "from_official",
    "from_official_model",
    "load_converted",
    "load_official",
    "official_entries",
    "official_model_doc",
    "official_model_sources",
    "register_official",
    "register_official_model",
    "resolve_official",
]
