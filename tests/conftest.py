"""Shared fixtures: the template as copier sees it, and renders of every preset."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from copier import run_copy
from hypothesis import settings
from ruamel.yaml import YAML

# Real servers (registry, dockerd, PostgreSQL, S3, ACME, Pushgateway), one module each, started
# on demand; and the backup tests' database and bucket on them.
pytest_plugins: list[str] = [
    "tests.servers.registry",
    "tests.servers.docker",
    "tests.servers.postgres",
    "tests.servers.s3",
    "tests.servers.acme",
    "tests.servers.pushgateway",
    "tests.servers.shared",
    "tests.servers.sshd",
    "tests.backup_data",
]

# Hypothesis draws the same examples on every default run, so CI cannot fail on a draw nobody
# can reproduce; `--hypothesis-profile=hunt` (with --hypothesis-seed=N) draws new ones.
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("hunt", derandomize=False, print_blob=True)
settings.load_profile("default")


def pytest_configure(config: pytest.Config) -> None:
    """Under mutmut's stats run (`nox -s mutation`), the functions that the processes a test
    starts reach are that test's too: they write them to a file (tests/mutation_hits), read
    after each test. mutmut's own recording stays in this process: in a child, it would look for
    its configuration in the child's folder (a rendered kit has none) and keep what it records
    in the child's memory."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        del os.environ["MUTANT_UNDER_TEST"]
        fd, hits = tempfile.mkstemp(prefix="shipyard-mutmut-hits-")
        os.close(fd)
        os.environ[CHILD_HITS] = hits
        config.pluginmanager.register(ChildHits(Path(hits)), "shipyard-child-hits")


CHILD_HITS = "SHIPYARD_MUTMUT_HITS"


class ChildHits:
    """Credits the functions child processes reached (tests/mutation_hits) to the running test,
    before mutmut's stats plugin files this test's functions at its teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        mutmut: Any = importlib.import_module("mutmut.state")  # only in mutmut's venv
        with self.path.open("r+", encoding="utf-8") as hits:
            fcntl.flock(hits, fcntl.LOCK_EX)  # no child appends between the read and the cut
            names = hits.read().split()
            hits.truncate(0)
        mutmut.state()._stats.update(names)

    def pytest_unconfigure(self) -> None:
        # mutmut forks its mutants' test processes from this one: their children must run the
        # mutant, not record.
        del os.environ[CHILD_HITS]
        self.path.unlink(missing_ok=True)


def forked_hits() -> Callable[[], None]:
    """For a test's forked child (os.fork), called first: during mutmut's stats run, opens the
    file of child hits now (the child may change to a user who cannot) and returns what appends
    the functions the child reached to it, for the child to call before it exits. mutmut
    records them in the process's memory, which the child's exit loses: the test would never
    be run against their mutants. Otherwise, a no-op."""
    hits = os.environ.get(CHILD_HITS)
    if not hits:
        return lambda: None
    fd = os.open(hits, os.O_WRONLY | os.O_APPEND)

    def keep() -> None:
        mutmut: Any = importlib.import_module("mutmut.state")
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the other children's lines (tests/mutation_hits)
        os.write(fd, "".join(f"{name}\n" for name in mutmut.state()._stats).encode())
        os.close(fd)

    return keep


# The longest single tests (minutes each: every example renders a kit and runs every
# validator), run first. xdist hands tests out in collection order, so one met last keeps a
# worker busy alone at the end of the run while the other cores idle.
LONGEST_FIRST = ("tests/test_fuzz.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST_FIRST)


REPO = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO / "tests" / "presets"
PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yml"))

Render = Callable[[Mapping[str, Any], Path], Path]


def load_preset(name: str) -> dict[str, Any]:
    """The answers of tests/presets/NAME.yml."""
    data: dict[str, Any] = YAML(typ="safe").load((PRESETS_DIR / f"{name}.yml").read_text())
    return data


def copy_template(dst: Path) -> Path:
    """The working tree's template files without .git (so renders see uncommitted edits) and
    without what is never part of the template (caches, build/'s preset renders)."""
    ignore = shutil.ignore_patterns(
        ".git", ".nox", "build", "__pycache__", "*.egg-info", ".*_cache"
    )
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def render_kit(template: Path, answers: Mapping[str, Any], dst: Path) -> Path:
    """`copier copy --defaults` of `template` with the given answers into `dst`."""
    run_copy(str(template), dst, data=dict(answers), defaults=True, unsafe=True, quiet=True)
    return dst


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree's template files (`copy_template`), once per session."""
    return copy_template(tmp_path_factory.mktemp("template") / "shipyard")


@pytest.fixture(scope="session")
def render(template_dir: Path) -> Render:
    """render(answers, dst) -> dst: `copier copy --defaults` with the given answers."""

    def _render(answers: Mapping[str, Any], dst: Path) -> Path:
        return render_kit(template_dir, answers, dst)

    return _render


@pytest.fixture(scope="session")
def rendered(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """rendered(preset) -> folder: each preset rendered once per test session (per worker)."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("presets")

    def _rendered(preset: str) -> Path:
        if preset not in cache:
            cache[preset] = render(load_preset(preset), root / preset)
        return cache[preset]

    return _rendered


def copier_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `copier` command of this interpreter, as a user would; never raises."""
    copier = Path(sys.executable).with_name("copier")
    return subprocess.run([str(copier), *args], capture_output=True, text=True, check=False)


def invoke_cli(
    root: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run `invoke ARGS` in a generated kit as a user would (a subprocess of this interpreter),
    with `env` over this process's environment; never raises on its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# A fixed identity, so tests commit on machines with no git user configured.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Shipyard Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.com",
    "GIT_COMMITTER_NAME": "Shipyard Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.com",
}


def edit_yaml(path: Path, change: Callable[[Any], None]) -> None:
    """Apply `change` to a YAML file of a kit, comments and order kept (ruamel round trip)."""
    yaml = YAML()
    data = yaml.load(path.read_text())
    change(data)
    with path.open("w") as out:
        yaml.dump(data, out)


def script_package(root: Path, script: str, text: str) -> None:
    """Make `root` a Node package with no dependencies whose build copies src/<script> (with
    `text`) to dist/, which .dockerignore keeps out: a kit builds it in seconds."""
    (root / "package.json").write_text(
        '{"name": "w", "version": "1.0.0", "private": true,'
        f' "scripts": {{"build": "mkdir -p dist && cp src/{script} dist/"}}}}\n'
    )
    (root / "package-lock.json").write_text(
        '{"name": "w", "version": "1.0.0", "lockfileVersion": 3, "requires": true,'
        ' "packages": {"": {"name": "w", "version": "1.0.0"}}}\n'
    )
    (root / "src").mkdir()
    (root / "src" / script).write_text(text)


def stand_in(folder: Path, name: str, script: str) -> Path:
    """A shell script `name` in `folder` (made if missing) with `script` as its body, to take a
    real tool's place on PATH; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def git(root: Path, *args: str) -> str:
    """Run git in `root` as the test identity; return its stdout (raises on failure)."""
    return subprocess.run(
        ["git", *args],
        cwd=root,
        env={**os.environ, **GIT_IDENTITY},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def init_repo(root: Path, message: str) -> None:
    """Make `root` a git repository on `main` with everything in it committed."""
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def released_template(template_dir: Path, repo: Path, tag: str) -> Path:
    """`repo`: a git repository of the working tree's template, committed and tagged `tag`."""
    shutil.copytree(template_dir, repo, symlinks=True)
    init_repo(repo, f"release {tag.removeprefix('v')}")
    git(repo, "tag", tag)
    return repo


def chart_digests(chart: Path) -> list[str]:
    """`--set` of a placeholder digest for each image of `chart`, as `shipyard validate`
    renders it: a release (and `helm template`) refuses an image without one."""
    from shipyard.validate.files import charts

    (found,) = [c for c in charts(chart.parent.parent) if c.path == chart]
    return found.release_args()


def template_chart(chart: Path, *args: str, env: Mapping[str, str] | None = None) -> list[Any]:
    """The objects `helm template` renders of `chart` with a digest per image, then `args`."""
    result = subprocess.run(
        ["helm", "template", "rel", str(chart), *chart_digests(chart), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in YAML(typ="safe").load_all(result.stdout) if doc]


def compose_placeholder(name: str) -> str:
    """The value render tests give the required variable `name`: its name shows in what uses it."""
    return f"value-of-{name}"


def compose_services(root: Path, file: str = "compose.prod.yaml") -> dict[str, Any]:
    """The services of a Compose file as `docker compose config` resolves them, with the
    migration profile and every required variable set to its placeholder."""
    text = (root / file).read_text()
    required = {
        name: compose_placeholder(name) for name in re.findall(r"\$\{([A-Z0-9_]+):\?", text)
    }
    result = subprocess.run(
        ["docker-compose", "--file", file, "--profile", "migrate", "config", "--format", "json"],
        cwd=root,
        env={"PATH": os.environ["PATH"], **required, "SHIPYARD_HOST": "example.org"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services
