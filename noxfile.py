"""This repository's sessions: `nox` runs what CI needs (lint, tests)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

# Every session installs through nox.project.dependency_groups, new in nox 2025.2.9. nox reads
# this line before running the file, so an older nox stops with the requirement instead of an
# AttributeError once a session starts. pyproject.toml's lint and test groups ask the same.
nox.needs_version = ">=2025.2.9"

PYPROJECT = nox.project.load_toml("pyproject.toml")
# The interpreter every session runs on: the oldest Python the package supports
# (pyproject.toml requires-python).
PYTHON = "3.11"

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
# Session venvs can live outside the clone (.ci/setup.sh sets NOX_ENVDIR) and be reused.
nox.options.envdir = os.environ.get("NOX_ENVDIR", ".nox")
nox.options.sessions = ["lint", "tests", "validate"]
nox.options.error_on_missing_interpreters = True


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, deptry, yamllint and shellcheck over this repository's own code."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    # Every third-party import of the package is a declared dependency (no dev group counts).
    session.run("deptry", "src")
    session.run("yamllint", "-c", "src/shipyard/yamllint.yaml", "copier.yml", "tests/presets")
    session.run("shellcheck", ".ci/run", ".ci/setup.sh")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite against real tools and servers; extra arguments go to pytest."""
    _install(session, "test")
    # loadgroup: tests marked xdist_group("docker") share one worker, so one dockerd serves them.
    session.run("pytest", "-n", "auto", "--dist", "loadgroup", *session.posargs)


@nox.session(python=PYTHON)
def render(session: nox.Session) -> None:
    """Render every preset (or the named ones) into build/presets/<name> with copier."""
    _install(session, "render")
    _render_presets(session)


@nox.session(python=PYTHON)
def validate(session: nox.Session) -> None:
    """Render the presets (or the named ones), then `shipyard validate` them: one report."""
    _install(session, "render")
    session.run("shipyard", "validate", *map(str, _render_presets(session)))


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: print ratios measured side by side in one run."""
    _install(session, "bench")
    for script in sorted(Path("benchmarks").glob("*.py")):
        session.run("python", str(script), *session.posargs)


def _render_presets(session: nox.Session) -> list[Path]:
    """`invoke render` (tasks.py) of the named presets, or all; returns their folders."""
    names = session.posargs or sorted(p.stem for p in Path("tests/presets").glob("*.yml"))
    session.run("invoke", "render", *(f"--preset={name}" for name in names))
    return [Path("build", "presets", name) for name in names]


def _install(session: nox.Session, group: str) -> None:
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, group))
