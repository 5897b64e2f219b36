"""Creating Kubernetes objects the tasks build (a CloudNativePG Backup or Cluster, a Job from
a CronJob), shared by the engines that drive a cluster."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipyard.engines.proc import Command, command, run


def create(namespace: str, path: Path) -> Command:
    """`kubectl create` of the manifest in `path` (written by `creating`): never `apply`, so
    an object of the same name is an error, not something changed."""
    return command("kubectl", "create", "--namespace", namespace, "--filename", str(path))


def creating(manifest: dict[str, Any], what: str, say: Callable[[str], None]) -> None:
    """Create `manifest` from a file in a private temporary folder, echoing the command. JSON,
    not YAML: a manifest read back from the cluster (a Job rendered from a CronJob) may hold
    strings such as `y` or `1e3` that PyYAML writes bare and kubectl's YAML reads as a boolean
    or a number."""
    with tempfile.TemporaryDirectory(prefix="shipyard-") as folder:
        path = Path(folder) / f"{manifest['kind'].lower()}.json"
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        cmd = create(manifest["metadata"]["namespace"], path)
        say(f"$ {cmd}")
        run(cmd, what=what)
