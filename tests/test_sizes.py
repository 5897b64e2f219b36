"""Sizes from the answers: a component's `resources` reach its Compose limits and its chart
Deployment alone (resolved by the real `docker compose config` and `helm template`), and Redis'
maxmemory and its container's cap follow `redis_maxmemory`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Render, compose_services, load_preset, template_chart

MIB = 1024 * 1024


def _kit(render: Render, tmp_path: Path) -> Path:
    """project-management on Compose (staging) and Helm (prod), its backend sized 1.5 CPU and
    1536Mi, its frontend left at the kit's defaults, Redis holding at most 1gb."""
    answers: dict[str, Any] = load_preset("project-management")
    components = []
    for c in answers["components"]:
        c = {k: v for k, v in c.items() if k != "resources"}
        if c["name"] == "backend":
            c["resources"] = {"cpu": "1500m", "memory": "1536Mi"}
        components.append(c)
    changes = {"components": components, "production_target": "helm", "redis_maxmemory": "1gb"}
    return render({**answers, **changes}, tmp_path / "pmtool")


def _chart_resources(root: Path) -> dict[str, Any]:
    """Each Deployment's container resources as `helm template` renders the prod values."""
    chart = root / "charts" / "pmtool"
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]["resources"]
        for doc in template_chart(chart, "-f", str(chart / "values-prod.yaml"))
        if doc["kind"] == "Deployment"
    }


def test_a_components_resources_reach_it_alone(render: Render, tmp_path: Path) -> None:
    root = _kit(render, tmp_path)

    services = compose_services(root)
    backend = services["backend"]["deploy"]["resources"]
    assert float(backend["limits"]["cpus"]) == 1.5
    assert int(backend["limits"]["memory"]) == 1536 * MIB
    assert int(backend["reservations"]["memory"]) == 768 * MIB
    frontend = services["frontend"]["deploy"]["resources"]  # no answer: the kit's defaults
    assert float(frontend["limits"]["cpus"]) == 1.0
    assert int(frontend["limits"]["memory"]) == 512 * MIB
    assert int(frontend["reservations"]["memory"]) == 256 * MIB

    resources = _chart_resources(root)
    assert resources["rel-pmtool-backend"] == {
        "requests": {"cpu": "1500m", "memory": "768Mi"},
        "limits": {"memory": "1536Mi"},
    }
    assert resources["rel-pmtool-frontend"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }


def test_redis_maxmemory_follows_the_answer(render: Render, tmp_path: Path) -> None:
    redis = compose_services(_kit(render, tmp_path))["redis"]
    script = " ".join(redis["command"])
    assert "--maxmemory 1gb --maxmemory-policy allkeys-lru" in script, script
    assert "256mb" not in script
    # Its container may use a quarter more than the data it holds: 1280 MiB.
    assert int(redis["deploy"]["resources"]["limits"]["memory"]) == 1280 * MIB
