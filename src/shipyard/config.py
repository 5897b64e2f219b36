"""Load shipyard.yaml and check it against its schema before any task acts on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

CONFIG_FILE = "shipyard.yaml"
ENVIRONMENTS = ("dev", "staging", "prod")
# Spellings people type for an environment, mapped to the name shipyard.yaml uses.
ENV_ALIASES = {"production": "prod", "stage": "staging", "development": "dev"}


class ConfigError(Exception):
    """shipyard.yaml is missing, unreadable or does not match its schema."""


@cache
def schema(name: str) -> dict[str, Any]:
    """Return one of the JSON Schemas shipped in `schemas/` (e.g. ``shipyard``)."""
    text = files("shipyard").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load_yaml(path: Path) -> Any:
    """Parse one YAML document safely; errors name the file and position."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def validator(schema_name: str) -> Draft202012Validator:
    """The validator every check of the named schema uses (formats checked too)."""
    return Draft202012Validator(
        schema(schema_name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(document: Any, schema_name: str) -> list[str]:
    """Every way `document` breaks the named schema, as 'path: reason' lines, sorted."""
    validator_ = validator(schema_name)
    errors = []
    for error in validator_.iter_errors(document):
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        errors.append(f"{where}: {error.message}")
    return sorted(errors)


@dataclass(frozen=True)
class Config:
    """A validated shipyard.yaml and the folder it lives in."""

    root: Path
    data: dict[str, Any]

    @property
    def service(self) -> str:
        name: str = self.data["service"]["name"]
        return name

    @property
    def components(self) -> list[dict[str, Any]]:
        components: list[dict[str, Any]] = self.data["components"]
        return components

    def environment(self, name: str) -> dict[str, Any]:
        """The settings of environment `name` (aliases such as 'production' accepted)."""
        env = ENV_ALIASES.get(name, name)
        environments: dict[str, dict[str, Any]] = self.data["environments"]
        if env not in environments:
            known = ", ".join(environments)
            raise ConfigError(f"unknown environment '{name}': choose one of {known}")
        return environments[env]

    def image_repository(self, component: str) -> str:
        """Where `component`'s image is pushed: <registry>/<service>-<component>."""
        registry: str = self.data["image"]["registry"]
        return f"{registry}/{self.service}-{component}"


def load(root: Path | str = ".") -> Config:
    """Read and validate `shipyard.yaml` in `root`; raise ConfigError with every problem.

    The Config's root is absolute (resolved here, once), so every path built from it (a
    backup folder, a file URI, a command's cwd) means the same folder wherever it is used.
    """
    path = Path(root) / CONFIG_FILE
    data = load_yaml(path)
    problems = schema_errors(data, "shipyard")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path} does not match the shipyard.yaml schema:\n{listed}")
    return Config(root=Path(root).resolve(), data=data)
