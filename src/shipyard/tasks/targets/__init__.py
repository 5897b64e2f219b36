"""Deployment targets, one module each, behind the `Target` protocol (base.py): the release
tasks pick the environment's target here and never branch on its kind themselves."""

from __future__ import annotations

from shipyard import config
from shipyard.tasks.targets.base import Options, RolledBack, Target
from shipyard.tasks.targets.compose import ComposeTarget
from shipyard.tasks.targets.helm import HelmTarget

__all__ = ["Options", "RolledBack", "Target", "for_environment"]


def for_environment(cfg: config.Config, env: config.Environment) -> Target:
    """The target `env` runs on."""
    if env.target == "helm":
        return HelmTarget(cfg, env)
    return ComposeTarget(cfg, env)
