"""The chart's custom resources against their operators' CRD schemas (vendored in
schemas/crds/, offline): prometheus-operator's monitors and rules, CloudNativePG's Cluster and
ScheduledBackup. kubernetes-validate knows only Kubernetes' own APIs, and `helm template`
without `--api-versions` renders none of these objects, so without this check they would go
unread.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from shipyard.validate import monitoring
from shipyard.validate.files import Chart, rel
from shipyard.validate.finding import Finding
from shipyard.validate.monitoring import render, render_failure, runs, values_name
from shipyard.validate.tools import each

CNPG_API = "postgresql.cnpg.io/v1"


@dataclass(frozen=True)
class CrdApi:
    """An operator's API the chart renders objects of, and how to render and find them."""

    version: str
    # Kinds with a vendored schema: schemas/crds/<kind, lowercased>.json.
    kinds: tuple[str, ...]
    # The chart's template a kind comes from, as a finding names it.
    where: Callable[[Path, Chart, str], str]
    # Every API the render serves: more objects (and their options) render with them.
    apis: tuple[str, ...]


MONITORING = CrdApi(
    monitoring.API_VERSION,
    ("ServiceMonitor", "PodMonitor", "PrometheusRule"),
    monitoring.template_of,
    (monitoring.API_VERSION,),
)
# Rendered with the prometheus-operator API too: the Cluster's PodMonitor option then renders.
CLOUDNATIVEPG = CrdApi(
    CNPG_API,
    ("Cluster", "ScheduledBackup"),
    lambda root, chart, kind: rel(root, chart.path / "templates" / "cloudnativepg.yaml"),
    (CNPG_API, monitoring.API_VERSION),
)


def check_monitoring_crds(root: Path) -> list[Finding]:
    """Each ServiceMonitor, PodMonitor and PrometheusRule the chart renders (per values file)
    against its CRD's schema."""
    return check_crds(root, MONITORING)


def check_cloudnativepg_crds(root: Path) -> list[Finding]:
    """Each CloudNativePG Cluster and ScheduledBackup the chart renders (per values file)
    against its CRD's schema."""
    return check_crds(root, CLOUDNATIVEPG)


def check_crds(root: Path, api: CrdApi) -> list[Finding]:
    """The objects of `api` the chart renders (per values file) against their CRDs' schemas,
    strictly: an unknown field is an error, as the API server's strict field validation makes it."""
    from jsonschema import Draft7Validator

    def one(run: tuple[Chart, Path | None]) -> list[Finding]:
        chart, values = run
        documents, failed = render(root, chart, values, api.apis)
        if failed:
            return [render_failure(root, chart, values, failed, api.apis)]
        findings = []
        for obj in (d for d in documents if d.get("apiVersion") == api.version):
            kind = str(obj.get("kind"))
            name = f"{kind}/{(obj.get('metadata') or {}).get('name', '?')}"
            where = api.where(root, chart, kind)
            if kind not in api.kinds:
                message = f"{name} (with {values_name(values)}): no schema for {api.version}"
                findings.append(Finding(where, None, "crd-schema", kind, message))
                continue
            validator = Draft7Validator(strict_schema(kind))
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
                message = f"{name} (with {values_name(values)}): {path}: {error.message}"
                findings.append(Finding(where, None, "crd-schema", kind, message))
        return findings

    return [f for found in each(one, runs(root)) for f in found]


@cache
def strict_schema(kind: str) -> dict[str, Any]:
    """The vendored openAPIV3Schema of `kind`, made strict (see schemas/crds/README.md)."""
    text = files("shipyard").joinpath("schemas", "crds", f"{kind.lower()}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    for node in _objects(schema):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    # metadata is `type: object` alone in a CRD: the API server checks it, and so do we.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "spec"})
    return schema


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside `node`, `node` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)
