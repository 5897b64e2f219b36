"""Load shipyard.yaml and check it against its schema before any task acts on it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

CONFIG_FILE = "shipyard.yaml"
# Where copier records a generated repo's answers and template (read by `template.*` and
# `shipyard validate`).
ANSWERS_FILE = ".copier-answers.yml"
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
class Component:
    """One deployable part of the service: an image built from its Dockerfile target."""

    name: str
    kind: Literal["http", "worker"]
    path: str
    start: str
    # http components only (the schema requires them there and forbids them on workers).
    port: int | None = None
    route: str = ""
    # The DNS label it is served under (api: api.<environment host>); empty: the host itself.
    subdomain: str = ""
    # Where health is checked: an http component's port, else a worker's health_port (with
    # health_path) or its health_command; a worker may declare neither.
    health_path: str = ""
    health_port: int | None = None
    health_command: tuple[str, ...] = ()
    # Absolute folders in the container that persist across releases (a named volume or claim
    # each) and that `invoke backup` archives.
    data_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackupSettings:
    """Where an environment's backups are kept and for how long."""

    storage: Literal["local", "s3"]
    schedule: str
    retention_days: int
    path: str = ""  # local storage: a folder relative to the repository
    bucket: str = ""  # s3 storage
    prefix: str = ""
    endpoint: str = ""  # empty: AWS
    point_in_time: bool = False  # Compose: pgBackRest in the postgres service (backup/pitr.py)


@dataclass(frozen=True)
class Smoke:
    """A check run in a one-off container of a new image after each rollout."""

    command: tuple[str, ...]
    component: str = ""  # empty: the first http component, else the first component
    timeout: int = 120


@dataclass(frozen=True)
class Environment:
    """One environment of shipyard.yaml, named as the file names it (aliases resolved)."""

    name: str
    target: Literal["compose", "helm"]
    host: str
    replicas: int
    migrate: bool
    confirm: bool
    # Components that run another number of replicas than `replicas`.
    component_replicas: Mapping[str, int] = field(default_factory=dict)
    backup_before_migrate: bool = False
    # Each http component's health URL on its own host, checked after each deploy.
    health_urls: Mapping[str, str] = field(default_factory=dict)
    backup: BackupSettings | None = None
    smoke: Smoke | None = None
    # compose targets
    compose_file: str = "compose.prod.yaml"
    # helm targets (the schema requires both there)
    namespace: str = ""
    values_file: str = ""

    @property
    def is_helm(self) -> bool:
        return self.target == "helm"

    def replicas_of(self, component: str) -> int:
        """How many containers (pods) of `component` this environment runs."""
        return self.component_replicas.get(component, self.replicas)


@dataclass(frozen=True)
class Database:
    """The PostgreSQL the service uses: the name and role libpq defaults to."""

    name: str
    user: str
    version: int
    # Helm environments: "cloudnativepg" when the chart runs it as a CloudNativePG Cluster.
    on_kubernetes: Literal["external", "cloudnativepg"] = "external"

    @property
    def by_operator(self) -> bool:
        """The operator backs it up and recovers it on Kubernetes (engines/cnpg.py)."""
        return self.on_kubernetes == "cloudnativepg"


@dataclass(frozen=True)
class Config:
    """A validated shipyard.yaml and the folder it lives in, as typed values.

    `data` is the document as read (for tools that show it); the package reads the typed
    fields, so each key of the file is interpreted here and nowhere else.
    """

    root: Path
    data: dict[str, Any]
    service: str
    registry: str
    mirror: str
    dockerfile: str
    components: tuple[Component, ...]
    secrets: tuple[str, ...]
    database: Database | None
    environments: dict[str, Environment]

    def environment(self, name: str) -> Environment:
        """Environment `name` (aliases such as 'production' accepted)."""
        env = ENV_ALIASES.get(name, name)
        if env not in self.environments:
            known = ", ".join(self.environments)
            raise ConfigError(f"unknown environment '{name}': choose one of {known}")
        return self.environments[env]

    def component(self, name: str) -> Component:
        """The component called `name`; ConfigError listing the known ones."""
        for comp in self.components:
            if comp.name == name:
                return comp
        known = ", ".join(comp.name for comp in self.components)
        raise ConfigError(f"unknown component '{name}': choose one of {known}")

    def image_repository(self, component: str) -> str:
        """Where `component`'s image is pushed: <registry>/<service>-<component>."""
        return f"{self.registry}/{self.service}-{component}"


def _component(data: dict[str, Any]) -> Component:
    """One component of shipyard.yaml (its lists as tuples, so the Component is hashable)."""
    return Component(
        **{
            **data,
            "health_command": tuple(data.get("health_command", ())),
            "data_paths": tuple(data.get("data_paths", ())),
        }
    )


def _smoke(data: dict[str, Any]) -> Smoke:
    return Smoke(**{**data, "command": tuple(data["command"])})


# Environment keys that are not passed to Environment as they are written.
_NOT_TYPED_AS_IS = ("backup", "smoke", "health_url", "health_urls")


def _health_urls(components: list[dict[str, Any]], env: dict[str, Any]) -> dict[str, str]:
    """The environment's health URLs by component; a file from before `health_urls` has one
    `health_url`, the first http component's."""
    if "health_urls" in env:
        return dict(env["health_urls"])
    first = next((comp["name"] for comp in components if comp["kind"] == "http"), None)
    return {first: env["health_url"]} if first and "health_url" in env else {}


def _typed(root: Path, data: dict[str, Any]) -> Config:
    """The typed view of a document that already passed the schema."""
    db = data.get("database")
    return Config(
        root=root,
        data=data,
        service=data["service"]["name"],
        registry=data["image"]["registry"],
        mirror=data["image"]["mirror"],
        dockerfile=data["image"]["dockerfile"],
        components=tuple(_component(comp) for comp in data["components"]),
        secrets=tuple(data["secrets"]),
        database=(
            Database(db["name"], db["user"], db["version"], db.get("on_kubernetes", "external"))
            if db
            else None
        ),
        environments={
            name: Environment(
                name=name,
                **{key: value for key, value in env.items() if key not in _NOT_TYPED_AS_IS},
                health_urls=_health_urls(data["components"], env),
                backup=BackupSettings(**env["backup"]) if env.get("backup") else None,
                smoke=_smoke(env["smoke"]) if env.get("smoke") else None,
            )
            for name, env in data["environments"].items()
        },
    )


def _reference_errors(data: dict[str, Any]) -> list[str]:
    """What the schema cannot say: names that must be declared components, and settings the
    environment's target does not run."""
    declared = {comp["name"] for comp in data["components"]}
    known = f"is not one of the components ({', '.join(sorted(declared))})"
    served = {comp["name"] for comp in data["components"] if comp["kind"] == "http"}
    errors: list[str] = []
    for env, settings in data["environments"].items():
        for name in settings.get("component_replicas", {}):
            if name not in declared:
                errors.append(f"environments.{env}.component_replicas.{name}: '{name}' {known}")
        for name in settings.get("health_urls", {}):
            if name not in served:
                errors.append(
                    f"environments.{env}.health_urls.{name}: '{name}' is not one of the http "
                    f"components ({', '.join(sorted(served)) or 'there is none'})"
                )
        smoke = settings.get("smoke", {})
        if "component" in smoke and smoke["component"] not in declared:
            errors.append(f"environments.{env}.smoke.component: '{smoke['component']}' {known}")
    return errors


def load(root: Path | str = ".") -> Config:
    """Read and validate `shipyard.yaml` in `root`; raise ConfigError with every problem.

    The Config's root is absolute (resolved here, once), so every path built from it (a
    backup folder, a file URI, a command's cwd) means the same folder wherever it is used.
    """
    path = Path(root) / CONFIG_FILE
    data = load_yaml(path)
    problems = schema_errors(data, "shipyard") or _reference_errors(data)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{path} does not match the shipyard.yaml schema:\n{listed}")
    return _typed(Path(root).resolve(), data)
