"""The Compose checks: Compose itself on each file (and Caddy on the proxy's Caddyfile the
production file mounts), and the Compose Specification's schema."""

from __future__ import annotations

import os
import re
from pathlib import Path

from shipyard.validate.files import compose_files, matching, rel
from shipyard.validate.finding import Finding, oneline
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

    # The Caddyfile is part of this check, not one of its own: it is compose.prod.yaml's proxy
    # config, and Compose itself accepts any file at that mount.
    runs = each(one, compose_files(root)) + each(lambda p: _caddyfile(root, p), caddyfiles(root))
    return [f for found in runs for f in found]


def caddyfiles(root: Path) -> list[Path]:
    """The Caddyfiles of the kit (proxy/Caddyfile)."""
    return matching(root, ["Caddyfile"])


# "Error: adapting config using caddyfile: Caddyfile:12 - Error during parsing: ..."
_CADDY_LINE = re.compile(r"Caddyfile:(\d+)")


# `tls /certs/fullchain.pem ...`: certificate files the team puts on the host (never in git).
_CERT_FILE = re.compile(r"^\s*tls\s+(/\S+)", re.MULTILINE)


def _caddyfile(root: Path, path: Path) -> list[Finding]:
    """`caddy validate`: parses the Caddyfile and provisions every module as a reload would,
    without binding a port (an import that matches no file yet is only a warning). With
    certificate files that are not here (tls=files: they live on the host), provisioning
    cannot load them, so `caddy adapt` checks everything short of that."""
    name = rel(root, path)
    certs = [Path(found) for found in _CERT_FILE.findall(path.read_text("utf-8"))]
    step = "adapt" if any(not cert.is_file() for cert in certs) else "validate"
    result = run_tool(["caddy", step, "--adapter", "caddyfile", "--config", name], root)
    if result.returncode == 0:
        return []
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    message = oneline(errors[-1]) if errors else no_report(result)
    match = _CADDY_LINE.search(message)
    return [Finding(name, int(match.group(1)) if match else None, "caddy", step, message)]


def check_compose_schema(root: Path) -> list[Finding]:
    """The Compose Specification's JSON Schema, which catches keys Compose would ignore."""
    return vendored_schema(root, "vendor.compose-spec", compose_files(root))
