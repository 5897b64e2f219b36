"""What every task family shares: loading shipyard.yaml and turning errors into `Exit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit

from shipyard import config


def load_config(c: Context) -> config.Config:
    """shipyard.yaml from the folder invoke runs in (or `shipyard.root` in invoke config)."""
    root = Path(c.config.get("shipyard", {}).get("root", "."))
    try:
        return config.load(root)
    except config.ConfigError as exc:
        raise Exit(f"shipyard: {exc}", code=2) from None


def environment(cfg: config.Config, env: str) -> dict[str, Any]:
    """The named environment's settings, or `Exit` listing the known ones."""
    try:
        return cfg.environment(env)
    except config.ConfigError as exc:
        raise Exit(f"shipyard: {exc}", code=2) from None
