"""Config files: YAML (PyYAML), TOML or JSON, and the shipped ``configs/<preset>/<task>.yaml``.

YAML is read by PyYAML's safe loader, extended so that ``1e-3`` is a float (as in YAML 1.2 and
JSON; YAML 1.1 would make it the string ``"1e-3"``, so ``lr: 1e-3`` would not be a number).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONFIG_ROOT", "default_config_path", "parse_yaml", "preset_of", "read_config_file"]

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"  # shipped in the package; configs/ links here


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads exponent floats without a dot (``1e-3``) as floats."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``text`` parsed by PyYAML's safe loader (``1e-3`` is a float).

    Raises:
        ValueError: the text is not valid YAML (the problem, line and column, on one line).
    """
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        where = f" (line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1})" if err.problem_mark else ""
        raise ValueError(f"{err.problem or err.context}{where}") from None
    except yaml.YAMLError as err:
        raise ValueError(str(err).splitlines()[0]) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml`` (:func:`parse_yaml`), ``.toml`` or ``.json`` config into a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if path.suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ValueError(f"{path}: config files must end in .yaml, .yml, .toml or .json")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ValueError("reading TOML needs Python >= 3.11; use YAML or JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text) if path.suffix == ".json" else parse_yaml(text)
    except ValueError as err:
        raise ValueError(f"{path}: cannot parse config: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of fields, got {type(data).__name__}")
    return data


def default_config_path(task: str, preset: str | None = None) -> Path | None:
    """``configs/<preset>/<task>.yaml``; without a preset ``mini/`` then ``lra/``; ``None`` if absent."""
    presets = [preset] if preset else ["mini", "lra"]
    for name in presets:
        path = CONFIG_ROOT / name / f"{task}.yaml"
        if path.is_file():
            return path
    if preset:
        have = sorted(p.stem for p in (CONFIG_ROOT / preset).glob("*.yaml"))
        raise ValueError(f"no {preset!r} config for task {task!r}; {preset} configs: {', '.join(have) or '(none)'}")
    return None


def preset_of(path: Path) -> str:
    """The ``configs/<preset>/`` folder holding ``path``, or ``""`` for a file outside the shipped configs."""
    path = path.resolve()
    return path.parent.name if path.parent.parent == CONFIG_ROOT else ""
