"""Which files of a kit each check looks at, and how findings name them (relative to the kit)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Folders that hold other people's files, never the kit's.
# What a chart is rendered with in place of each pushed image's digest.
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
SKIP_DIRS = {"node_modules", ".git", ".nox", ".venv", "venv", "dist", "build", "__pycache__"}
# Shells shellcheck understands, as named on a script's #! line.
SHELLS = {"sh", "bash", "dash", "ksh", "busybox"}


def all_files(root: Path) -> list[Path]:
    """Every file under `root` outside SKIP_DIRS, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        found += [Path(dirpath, name) for name in sorted(filenames)]
    return found


def matching(root: Path, patterns: Iterable[str]) -> list[Path]:
    """The files under `root` whose path matches any of the glob `patterns`."""
    patterns = list(patterns)
    return [p for p in all_files(root) if any(p.match(pattern) for pattern in patterns)]


def rel(root: Path, file: str | Path) -> str:
    """`file` as a finding names it: relative to the kit, or as given when outside it."""
    path = Path(file)
    if not path.is_absolute():
        path = root / path
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(file)


def dockerfiles(root: Path) -> list[Path]:
    """Every Dockerfile (Dockerfile, *.Dockerfile, Dockerfile.*)."""
    found = matching(root, ["Dockerfile", "*.Dockerfile", "Dockerfile.*"])
    # BuildKit reads Dockerfile.dockerignore as that Dockerfile's ignore file: not a Dockerfile.
    return [p for p in found if p.suffix != ".dockerignore"]


def shell_scripts(root: Path) -> list[Path]:
    """Every *.sh/*.bash file and every file whose #! line runs a shell shellcheck knows."""
    scripts = []
    for path in all_files(root):
        if path.suffix in (".sh", ".bash"):
            scripts.append(path)
            continue
        try:
            with path.open("rb") as handle:
                first = handle.readline(200)
        except OSError:
            continue
        if first.startswith(b"#!"):
            words = first[2:].decode("utf-8", "replace").split()
            # `#!/usr/bin/env bash` names the shell in its second word.
            if words and Path(words[0]).name == "env":
                words = [w for w in words[1:] if not w.startswith("-")]
            if words and Path(words[0]).name in SHELLS:
                scripts.append(path)
    return scripts


def workflow_files(root: Path) -> list[Path]:
    """GitHub Actions workflows under .github/workflows."""
    return sorted(p for p in (root / ".github" / "workflows").glob("*.y*ml") if p.is_file())


def action_files(root: Path) -> list[Path]:
    """The repository's own composite actions, .github/actions/*/action.yml."""
    return sorted((root / ".github" / "actions").glob("*/action.y*ml"))


def dependabot_files(root: Path) -> list[Path]:
    """The Dependabot configuration, .github/dependabot.yml."""
    return sorted(p for p in (root / ".github").glob("dependabot.y*ml") if p.is_file())


def compose_files(root: Path) -> list[Path]:
    """The Compose files at the kit's top level (compose.yaml, compose.prod.yaml, ...)."""
    return sorted(p for p in root.glob("compose*.y*ml") if p.is_file())


@dataclass(frozen=True)
class Chart:
    """A Helm chart of the kit and the per-environment values files deploys use with it."""

    path: Path
    library: bool
    values: tuple[Path | None, ...]  # None: the chart's defaults alone
    # Values paths of the image digests in values.yaml (components.api.image.digest, ...).
    digests: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    def release_args(self) -> list[str]:
        """`--set` of a placeholder digest for each image, as a deploy gives the pushed ones:
        a chart may refuse to render a release whose images have none (Shipyard's does)."""
        return [arg for path in self.digests for arg in ("--set", f"{path}={PLACEHOLDER_DIGEST}")]


def charts(root: Path) -> list[Chart]:
    """Every chart directly under charts/, with its values-<env>.yaml files."""
    from ruamel.yaml import YAML

    found = []
    for chart_yaml in sorted((root / "charts").glob("*/Chart.yaml")):
        try:
            meta = YAML(typ="safe", pure=True).load(chart_yaml.read_text("utf-8")) or {}
        except Exception:  # helm lint reports a broken Chart.yaml precisely
            meta = {}
        envs = tuple(sorted(chart_yaml.parent.glob("values-*.yaml")))
        library = isinstance(meta, dict) and meta.get("type") == "library"
        digests = tuple(sorted(_digest_paths(chart_yaml.parent / "values.yaml")))
        found.append(Chart(chart_yaml.parent, library, envs or (None,), digests))
    return found


def _digest_paths(values: Path) -> Iterator[str]:
    """The path of each `image.digest` in a values file (none when it does not parse: helm
    lint says why)."""
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe", pure=True).load(values.read_text("utf-8"))
    except Exception:
        return
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        prefix, node = pending.pop()
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "image" and isinstance(value, dict) and "digest" in value:
                yield f"{path}.digest"
            pending.append((f"{path}.", value))
