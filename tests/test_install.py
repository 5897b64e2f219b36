"""The package as a user installs it: the built wheel alone in a pristine venv.

Development and test venvs carry copier, nox and their dependencies, so an import the package
does not declare works there and breaks every user (it happened with `packaging`). This test
builds the wheel, installs it with its declared dependencies only (no dependency group, no
extra) into a venv made by the stdlib, and runs a kit's documented entry points from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, Render, init_repo

DIGEST = "sha256:" + "ab" * 32

pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stdlib venv holding the built shipyard wheel and its declared dependencies only."""
    work = tmp_path_factory.mktemp("install")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # PIP_* from the caller (e.g. a constraint file) must not shape the user's install.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    dist = work / "dist"
    built = run([*pip, "wheel", "--no-deps", "-w", str(dist), str(REPO)], work, clean)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("shipyard-*.whl")
    installed = run([*pip, "install", str(wheel)], work, clean)
    assert installed.returncode == 0, installed.stderr
    return env_dir


@pytest.fixture(scope="module")
def kit(render: Render, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = render({"project_name": "Shop API"}, tmp_path_factory.mktemp("kit") / "shop-api")
    init_repo(root, "kit")
    return root


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["invoke", "--list"], "deploy"),
        (["invoke", "deploy", "--env", "prod", "--dry-run"], "helm upgrade --install shop-api"),
        (["shipyard", "validate", "--help"], "usage: shipyard validate"),
        (["shipyard", "backup", "--help"], "usage: shipyard backup"),
        (["shipyard", "--version"], "shipyard "),
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
    }
    # The command really comes from the pristine venv, not from the test environment.
    assert shutil.which(argv[0], path=path) == str(pristine / "bin" / argv[0])
    result = run(argv, kit, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert expected in output
