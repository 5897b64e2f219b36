"""This repository's sessions: `nox` runs what CI needs (lint, tests)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

PYPROJECT = nox.project.load_toml("pyproject.toml")

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
# Session venvs can live outside the clone (.ci/setup.sh sets NOX_ENVDIR) and be reused.
nox.options.envdir = os.environ.get("NOX_ENVDIR", ".nox")
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict and yamllint over this repository's own code."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("yamllint", "-c", "src/shipyard/yamllint.yaml", "copier.yml", "tests/presets")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The test suite against real tools and servers; extra arguments go to pytest."""
    _install(session, "test")
    # loadgroup: tests marked xdist_group("docker") share one worker, so one dockerd serves them.
    session.run("pytest", "-n", "auto", "--dist", "loadgroup", *session.posargs)


@nox.session(python="3.11", default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: print ratios measured side by side in one run."""
    _install(session, "bench")
    for script in sorted(Path("benchmarks").glob("*.py")):
        session.run("python", str(script), *session.posargs)


def _install(session: nox.Session, group: str) -> None:
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, group))
