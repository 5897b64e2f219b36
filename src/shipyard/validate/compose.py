"""The Compose checks: Compose itself on each file, and the Compose Specification's schema."""

from __future__ import annotations

import os
import re
from pathlib import Path

from shipyard.validate.files import compose_files
from shipyard.validate.finding import Finding
from shipyard.validate.schemas import vendored_schema
from shipyard.validate.tools import each, no_report, run_tool
from shipyard.validate.yaml_lines import yaml_line


def check_compose(root: Path) -> list[Finding]:
    """`docker compose config -q` on each Compose file, interpolated with .env.example.

    Using .env.example proves it declares every variable the files require.
    """
    env_file = root / ".env.example"

    def one(path: Path) -> list[Finding]:
        argv = ["docker-compose", "-f", path.name]
        if env_file.is_file():
            argv += ["--env-file", env_file.name]
        result = run_tool([*argv, "config", "--quiet"], root)
        if result.returncode == 0:
            return []
        message = no_report(result).replace(f"{root}{os.sep}", "")
        # "validating compose.yaml: services.db.healthchek ..." names the key; find its line.
        match = re.search(r"validating \S+: ([-\w.]+)", message)
        line = yaml_line(path, match.group(1).split(".")) if match else None
        return [Finding(path.name, line, "compose", "config", message)]

    return [f for found in each(one, compose_files(root)) for f in found]


def check_compose_schema(root: Path) -> list[Finding]:
    """The Compose Specification's JSON Schema, which catches keys Compose would ignore."""
    return vendored_schema(root, "vendor.compose-spec", compose_files(root))
