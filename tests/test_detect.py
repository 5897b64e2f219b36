"""What an existing service's files answer for `shipyard new` (shipyard/detect.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard import detect


def repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"package.json": "{}", "package-lock.json": "{}"},
            {"runtime": "node", "package_manager": "npm"},
        ),
        (
            {"package.json": "{}", "pnpm-lock.yaml": ""},
            {"runtime": "node", "package_manager": "pnpm"},
        ),
        (
            {"package.json": "{}", "yarn.lock": "", ".nvmrc": "v20.11.1\n"},
            {"runtime": "node", "package_manager": "yarn", "node_version": "20"},
        ),
        (
            {"pyproject.toml": "", "uv.lock": ""},
            {"runtime": "python", "python_package_manager": "uv"},
        ),
        (
            {"pyproject.toml": "", "poetry.lock": "", ".python-version": "3.11.9\n"},
            {"runtime": "python", "python_package_manager": "poetry", "python_version": "3.11"},
        ),
        # An export beside the lock is not a second way to install.
        (
            {"pyproject.toml": "", "uv.lock": "", "requirements.txt": ""},
            {"runtime": "python", "python_package_manager": "uv"},
        ),
        (
            {"requirements.txt": "flask==3.1.0\n"},
            {"runtime": "python", "python_package_manager": "pip"},
        ),
        # No lock: the package manager's default stays.
        ({"pyproject.toml": ""}, {"runtime": "python"}),
        (
            {"go.mod": "module example.com/x\n\ngo 1.26.2\n"},
            {"runtime": "go", "go_version": "1.26"},
        ),
        # Pins the kit does not offer, or cannot read, are left to the default.
        ({"go.mod": "module example.com/x\n\ngo 1.21\n"}, {"runtime": "go"}),
        ({"package.json": "{}", ".nvmrc": "lts/*\n"}, {"runtime": "node"}),
        ({"pyproject.toml": "", ".python-version": "pypy3.10\n"}, {"runtime": "python"}),
        ({"README.md": "# new\n"}, {}),
    ],
)
def test_the_files_answer(tmp_path: Path, files: dict[str, str], expected: dict[str, str]) -> None:
    found = detect.answers(repo(tmp_path, files), {})
    assert found.problem == ""
    assert found.answers == expected
    assert set(found.sources) == set(expected)
    for name in found.sources.values():
        assert (tmp_path / name).is_file()


def test_a_given_answer_is_kept_and_steers_the_rest(tmp_path: Path) -> None:
    root = repo(tmp_path, {"package.json": "{}", "pyproject.toml": "", "poetry.lock": ""})
    found = detect.answers(root, {"runtime": "python"})
    assert found.answers == {"python_package_manager": "poetry"}
    found = detect.answers(root, {"runtime": "python", "python_package_manager": "pip"})
    assert found.answers == {}
    assert found.describe() == ""


def test_files_pointing_two_ways_are_refused_with_the_answer_that_settles_it(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path, {"go.mod": "module x\n", "package.json": "{}"})
    found = detect.answers(root, {})
    assert found.answers == {}
    assert (
        found.problem == f"runtime: {root} holds package.json and go.mod; answer -d runtime=node|go"
    )

    (tmp_path / "locks").mkdir()
    locks = repo(
        tmp_path / "locks", {"package.json": "{}", "package-lock.json": "{}", "yarn.lock": ""}
    )
    found = detect.answers(locks, {})
    assert found.problem == (
        f"package_manager: {locks} holds package-lock.json and yarn.lock; answer -d "
        "package_manager=npm|yarn"
    )
    assert detect.answers(locks, {"package_manager": "yarn"}).answers == {"runtime": "node"}


def test_describe_names_each_answer_and_its_file(tmp_path: Path) -> None:
    root = repo(tmp_path, {"pyproject.toml": "", "poetry.lock": ""})
    assert detect.answers(root, {}).describe() == (
        "runtime=python (pyproject.toml), python_package_manager=poetry (poetry.lock)"
    )
