"""Where in a YAML file a finding points: the line of the key a tool's error names.

Schema validators name a path of keys (`$.services.db["healthcheck"]`), Compose names dotted
keys; these functions turn either into the line a user should look at.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def jsonpath_keys(path: str) -> list[str | int]:
    """`$.jobs.build["runs-on"][0]` -> ['jobs', 'build', 'runs-on', 0]."""
    keys: list[str | int] = []
    for name, quoted, index in re.findall(r"\.([^.\[]+)|\[[\"']([^\"']*)[\"']\]|\[(\d+)\]", path):
        keys.append(int(index) if index else (quoted or name))
    return keys


def unexpected_key(message: str) -> list[str]:
    """The first key a "not allowed ('x' was unexpected)" message names: the line to point at."""
    match = re.search(r"\('([^']+)'[^()]* (?:was|were) unexpected\)", message)
    return [match.group(1)] if match else []


def yaml_line(path: Path, keys: Sequence[str | int]) -> int | None:
    """1-based line of the deepest node on `keys` in a YAML file (None if unreadable)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        node: Any = YAML(typ="rt").load(path.read_text("utf-8"))
    except (OSError, YAMLError):
        return None
    line: int | None = 1
    for key in keys:
        lc = getattr(node, "lc", None)
        if lc is None:
            break
        try:
            line = lc.key(key)[0] + 1 if isinstance(key, str) else lc.item(key)[0] + 1
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    return line
