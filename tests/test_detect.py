"""What an existing service's files answer for `shipyard new` (shipyard/detect.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shipyard import detect

QUESTIONS = yaml.safe_load((Path(__file__).parent.parent / "copier.yml").read_text())
# The template's versions, as `shipyard new` passes them from the template it renders.
OFFERED = {q: QUESTIONS[q]["choices"] for q, _pin in detect.VERSIONS.values()}


def answers(dest: Path, given: dict[str, object]) -> detect.Found:
    return detect.answers(dest, given, OFFERED)


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
    found = answers(repo(tmp_path, files), {})
    assert found.problem == ""
    assert found.answers == expected
    assert set(found.sources) == set(expected)
    for name in found.sources.values():
        assert (tmp_path / name).is_file()


def test_a_given_answer_is_kept_and_steers_the_rest(tmp_path: Path) -> None:
    root = repo(tmp_path, {"package.json": "{}", "pyproject.toml": "", "poetry.lock": ""})
    found = answers(root, {"runtime": "python"})
    assert found.answers == {"python_package_manager": "poetry"}
    found = answers(root, {"runtime": "python", "python_package_manager": "pip"})
    assert found.answers == {}
    assert found.describe() == ""


def test_files_pointing_two_ways_are_refused_with_the_answer_that_settles_it(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path, {"go.mod": "module x\n", "package.json": "{}"})
    found = answers(root, {})
    assert found.answers == {}
    assert (
        found.problem == f"runtime: {root} holds package.json and go.mod; answer -d runtime=node|go"
    )

    (tmp_path / "locks").mkdir()
    locks = repo(
        tmp_path / "locks", {"package.json": "{}", "package-lock.json": "{}", "yarn.lock": ""}
    )
    found = answers(locks, {})
    assert found.problem == (
        f"package_manager: {locks} holds package-lock.json and yarn.lock; answer -d "
        "package_manager=npm|yarn"
    )
    # The answer settles it, and fixes the runtime as the user's (nothing taken).
    assert answers(locks, {"package_manager": "yarn"}) == detect.Found()


def test_describe_names_each_answer_and_its_file(tmp_path: Path) -> None:
    root = repo(tmp_path, {"pyproject.toml": "", "poetry.lock": ""})
    assert answers(root, {}).describe() == (
        "runtime=python (pyproject.toml), python_package_manager=poetry (poetry.lock)"
    )


@pytest.mark.parametrize(
    ("files", "expected", "source"),
    [
        # Poetry's project without its lock yet: uv, the default, would resolve nothing of it.
        (
            {"pyproject.toml": "[tool.poetry]\nname = 'x'\n"},
            "poetry",
            "pyproject.toml's [tool.poetry]",
        ),
        (
            {"pyproject.toml": "[build-system]\nbuild-backend = 'poetry.core.masonry.api'\n"},
            "poetry",
            "pyproject.toml's [tool.poetry]",
        ),
        (
            {"package.json": '{"packageManager": "pnpm@9.12.0"}'},
            "pnpm",
            "package.json's packageManager",
        ),
        (
            {"package.json": '{"packageManager": "yarn@1.22.22"}'},
            "yarn",
            "package.json's packageManager",
        ),
    ],
)
def test_a_package_manager_declared_without_its_lock_is_taken(
    tmp_path: Path, files: dict[str, str], expected: str, source: str
) -> None:
    found = answers(repo(tmp_path, files), {})
    question = "package_manager" if "package.json" in files else "python_package_manager"
    assert found.answers[question] == expected
    assert found.sources[question] == source


@pytest.mark.parametrize(
    "files",
    [
        {"package.json": "{}", "yarn.lock": "", ".yarnrc.yml": "nodeLinker: node-modules\n"},
        {"package.json": "{}", "yarn.lock": "# generated\n\n__metadata:\n  version: 8\n"},
        {"package.json": '{"packageManager": "yarn@4.5.0"}'},
    ],
    ids=[".yarnrc.yml", "lockfile v8", "packageManager"],
)
def test_yarn_2_or_later_is_refused_in_one_line(tmp_path: Path, files: dict[str, str]) -> None:
    found = answers(repo(tmp_path, files), {})
    assert found.answers == {}
    assert found.problem == (
        f"package_manager: {tmp_path} uses Yarn 2 or later, which the kit does not build (it "
        "installs with npm, pnpm or Yarn classic, 1.x); move the service to one of them, then "
        "answer -d package_manager=npm|pnpm|yarn"
    )


def test_pins_are_read_as_the_tools_read_them_and_those_not_offered_are_said(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path, {"pyproject.toml": "", ".python-version": "# pyenv\n3.11.7\n3.12.1\n"})
    assert answers(root, {}).answers["python_version"] == "3.11"
    (root / ".python-version").write_text("3.10\n")
    found = answers(root, {})
    assert "python_version" not in found.answers
    assert found.notes == [
        ".python-version names 3.10, which the kit does not offer (3.13, 3.12, 3.11): "
        "python_version stays the default"
    ]
    go = tmp_path / "go"
    go.mkdir()
    (go / "go.mod").write_text("module x\n\ngo 1.28.1\n\ntoolchain go1.28.2\n")
    assert answers(go, {}).notes == [
        "go.mod needs Go 1.28, newer than the kit's (1.27, 1.26, 1.25): the image builds with "
        "go_version's Go and will refuse the module"
    ]


def test_an_answer_of_one_runtime_fixes_it_over_the_files(tmp_path: Path) -> None:
    """`-d package_manager=pnpm` in a folder with a pyproject.toml means a Node.js kit: taking
    python from the file would drop the answer unsaid (copier asks it only for Node.js)."""
    root = repo(tmp_path, {"pyproject.toml": "", "pnpm-lock.yaml": ""})
    assert answers(root, {"package_manager": "pnpm", "node_version": "20"}) == detect.Found()
    assert answers(root, {"python_version": "3.11"}).answers == {}
    # Answers of two runtimes: copier's own questions speak, nothing is taken.
    assert answers(root, {"go_version": "1.26", "package_manager": "npm"}) == detect.Found()


def test_a_runtime_that_is_not_text_is_left_to_copiers_checks(tmp_path: Path) -> None:
    root = repo(tmp_path, {"pyproject.toml": "", "uv.lock": ""})
    assert answers(root, {"runtime": ["python"]}) == detect.Found()
    assert answers(root, {"runtime": None}) == detect.Found()
    assert answers(tmp_path / "not-there", {}) == detect.Found()


def test_what_detect_takes_is_what_copier_yml_offers() -> None:
    """The package managers and runtimes detect.py takes are copier.yml's choices, and the
    answers it names are its questions: copier would refuse any other."""
    for question, locks in detect.LOCKFILES.values():
        assert set(locks.values()) <= set(QUESTIONS[question]["choices"].values()), question
    assert set(detect.RUNTIMES) == set(QUESTIONS["runtime"]["choices"].values())
    for names in detect.RUNTIME_ANSWERS.values():
        assert set(names) <= set(QUESTIONS), names
    assert set(OFFERED) <= set(QUESTIONS)


def test_a_pin_is_taken_when_the_template_offers_it(tmp_path: Path) -> None:
    """The choices are the rendered template's (an older one, --vcs-ref, offers fewer)."""
    root = repo(tmp_path, {"go.mod": "module x\n\ngo 1.26\n"})
    assert detect.answers(root, {}, {"go_version": ["1.26"]}).answers["go_version"] == "1.26"
    older = detect.answers(root, {}, {"go_version": ["1.25", "1.24"]})
    assert "go_version" not in older.answers
    assert older.notes == [
        "go.mod needs Go 1.26, newer than the kit's (1.25, 1.24): the image builds with "
        "go_version's Go and will refuse the module"
    ]
    # A template that does not ask the question: nothing to take, nothing to say.
    assert detect.answers(root, {}, {}) == detect.Found({"runtime": "go"}, {"runtime": "go.mod"})
