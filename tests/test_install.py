"""The package as a user installs it: a kit's own pin, alone, in a pristine venv.

Development and test venvs carry copier, nox and their dependencies, so an import the package
does not declare works there and breaks every user (it happened with `packaging`). Here the
working tree is committed and tagged in a scratch repository, a kit is rendered from it, and
the kit's `requirements-shipyard.txt` (a `git+file://localhost/...@v0.0.1` pin) is installed
into a venv made by the stdlib: pip builds the wheel from that tag and installs it with its declared
dependencies only (no dependency group). The kit's documented entry points then run from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from copier import run_copy

from tests.conftest import init_repo, released_template

DIGEST = "sha256:" + "ab" * 32
SHAPING = {
    f"PIP_{name}"
    for name in (
        "CONSTRAINT",
        "REQUIREMENT",
        "NO_DEPS",
        "TARGET",
        "PREFIX",
        "ROOT",
        "USER",
        "REQUIRE_VIRTUALENV",
        "NO_BUILD_ISOLATION",
        "EDITABLE",
        "UPGRADE_STRATEGY",
        "PRE",
    )
}

pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def source(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of the working tree, tagged v0.0.1."""
    return released_template(template_dir, tmp_path_factory.mktemp("source") / "shipyard", "v0.0.1")


@pytest.fixture(scope="module")
def kit(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default kit, rendered from `source` as `copier copy` does."""
    root = tmp_path_factory.mktemp("kit") / "shop-api"
    run_copy(str(source), root, data={"project_name": "Shop API"}, defaults=True, unsafe=True)
    init_repo(root, "kit")
    return root


@pytest.fixture(scope="module")
def pristine(source: Path, kit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stdlib venv holding only what the kit's requirements-shipyard.txt installs."""
    pins = [
        line
        for line in (kit / "requirements-shipyard.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    # The kit installs the template it came from, at its release tag.
    assert pins == [f"shipyard[validate] @ git+file://localhost{source.resolve()}@v0.0.1"]
    env_dir = tmp_path_factory.mktemp("install") / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # What the caller's pip settings would add to or take from the user's install goes; where
    # packages come from (index, mirror, proxy, certificates) stays, as on the user's machine.
    clean = {k: v for k, v in os.environ.items() if k not in SHAPING and k != "VIRTUAL_ENV"}
    installed = run([*pip, "install", "-r", "requirements-shipyard.txt"], kit, clean)
    assert installed.returncode == 0, installed.stderr
    return env_dir


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["invoke", "--list"], "deploy"),
        (["invoke", "deploy", "--env", "prod", "--dry-run"], "helm upgrade --install shop-api"),
        (["shipyard", "validate", "--help"], "usage: shipyard validate"),
        (["shipyard", "backup", "--help"], "usage: shipyard backup"),
        (["shipyard", "--version"], "shipyard 0.0.1"),
    ],
)
def test_kit_entry_points_run_from_the_wheel_alone(
    pristine: Path, kit: Path, argv: list[str], expected: str
) -> None:
    helm = shutil.which("helm")
    if helm is None:
        pytest.fail("helm is not on PATH: run `. .ci/setup.sh`")
    # Only the venv and the system tools (git, helm): nothing of the test environment.
    path = os.pathsep.join([str(pristine / "bin"), str(Path(helm).parent), "/usr/bin", "/bin"])
    env = {
        "PATH": path,
        "HOME": os.environ.get("HOME", "/root"),
        "SHOP_API_IMAGE": f"registry.example.com/shop-api@{DIGEST}",
        # The chart's backup CronJob runs the backup image by digest (CI passes it too).
        "BACKUP_IMAGE": f"registry.example.com/shop-api-backup@{DIGEST}",
    }
    # The command really comes from the pristine venv, not from the test environment.
    assert shutil.which(argv[0], path=path) == str(pristine / "bin" / argv[0])
    result = run(argv, kit, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert expected in output
