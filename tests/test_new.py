"""`shipyard new`: copier's answers and files, every refusal at once, nothing half-written.

Adding the kit to an existing repository (the README's invitation) keeps the app's own files:
its README.md, .gitignore (which only gains the kit's missing patterns), package.json and
lockfile, and CI workflow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipyard import copier_migrations, validate
from shipyard.cli import main
from tests.conftest import PRESETS, PRESETS_DIR, copier_cli, git, init_repo
from tests.test_fuzz import invalid_answer_sets, valid_answer_sets
from tests.test_questionnaire import REJECTED

EXISTING_APP = Path(__file__).parent / "existing_app"
# Each line of a refusal: `answer: what to change`.
PROBLEM_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: \S.*$")
# Random answer sets checked against copier itself; CI can raise it.
EXAMPLES = int(os.environ.get("SHIPYARD_NEW_EXAMPLES", "15"))


def shipyard_new(
    capsys: pytest.CaptureFixture[str], template: Path, dest: Path, *args: str
) -> tuple[int, list[str]]:
    """Run `shipyard new` in process; (exit status, stderr lines)."""
    status = main(["new", "--template", str(template), *args, str(dest)])
    err = capsys.readouterr().err
    # Copier's own notes about a local template (no tags, dirty copy) are not problems.
    lines = [
        line
        for line in err.splitlines()
        if line.strip()
        and "No git tags found" not in line
        and "DirtyLocalWarning" not in line
        and line.strip() != "warn("
    ]
    assert "Traceback" not in err
    return status, lines


def data_file(tmp_path: Path, answers: dict[str, Any]) -> Path:
    path = tmp_path / "answers.yml"
    path.write_text(yaml.safe_dump(answers, allow_unicode=True, sort_keys=False))
    return path


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file under root: relative path -> (bytes, executable)."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), os.access(path, os.X_OK))
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


@pytest.mark.parametrize(("answers", "message"), REJECTED, ids=[m[:40] for _, m in REJECTED])
def test_every_invalid_answer_set_is_refused_with_one_line_per_problem(
    capsys: pytest.CaptureFixture[str],
    template_dir: Path,
    tmp_path: Path,
    answers: dict[str, Any],
    message: str,
) -> None:
    answers_file = data_file(tmp_path, {"project_name": "Orders API", **answers})
    dest = tmp_path / "service"
    status, lines = shipyard_new(capsys, template_dir, dest, "--data-file", str(answers_file))
    assert status == 2
    assert lines, "a refusal says why"
    assert all(PROBLEM_LINE.match(line) for line in lines), lines
    expected = "not one of the choices" if message == "Invalid choice" else message
    assert any(expected in line for line in lines), lines
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.yml"], "no leftovers"


def test_all_problems_are_reported_at_once(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "service"
    status, lines = shipyard_new(
        capsys,
        template_dir,
        dest,
        "-d",
        "project_name=  ",
        "-d",
        "package_manager=bun",
        "-d",
        "components=[{name: api, kind: http, port: 0, health_path: /health}]",
        "-d",
        "postgres_version=seventeen",
        "-d",
        "backup_schedule=daily",
        "-d",
        "projet_name=Orders",
        "-d",
        "uses_helm=false",
    )
    assert status == 2
    # The slug, hosts and bucket default from the empty name: fixing the name fixes them.
    assert lines == [
        "project_name: The project name cannot be empty.",
        "package_manager: not one of the choices: 'bun' is not in ['npm', 'pnpm', 'yarn']",
        "components: Component 'api' needs a port between 1 and 65535; got '0'.",
        "postgres_version: 'seventeen' is not a whole number",
        "backup_schedule: 'daily' is not a cron schedule: give 5 fields (minute hour day month "
        "weekday) of numbers, ranges, lists, steps or '*', e.g. '0 3 * * *' for 03:00 daily.",
        "projet_name: not a question of this template; check the spelling",
        "uses_helm: the template derives it from other answers; do not give it",
    ]
    assert not dest.exists()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # capsys is read (and so emptied) once per example.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(answers=st.one_of(valid_answer_sets(), invalid_answer_sets().map(lambda drawn: drawn[0])))
def test_refuses_exactly_what_copier_refuses(
    capsys: pytest.CaptureFixture[str], template_dir: Path, answers: dict[str, Any]
) -> None:
    """The fuzz test's answer sets: copier's first refusal is among shipyard new's lines;
    what copier accepts, shipyard new writes identically."""
    from copier import run_copy

    with tempfile.TemporaryDirectory() as tmp:
        by_copier, by_new = Path(tmp, "a", "kit"), Path(tmp, "b", "kit")
        answers_file = data_file(Path(tmp), answers)
        try:
            run_copy(
                str(template_dir), by_copier, data=answers, defaults=True, unsafe=True, quiet=True
            )
        except ValueError as exc:
            refusal: str | None = str(exc)
        else:
            refusal = None
        capsys.readouterr()
        status, lines = shipyard_new(capsys, template_dir, by_new, "--data-file", str(answers_file))
        if refusal is None:
            assert status == 0, lines
            assert tree(by_new) == tree(by_copier)
            return
        assert status == 2, refusal
        assert not by_new.exists()
        assert all(PROBLEM_LINE.match(line) for line in lines), lines
        named = re.match(r"^Validation error for question '([^']+)': (.*)$", refusal)
        if named:
            assert f"{named.group(1)}: {named.group(2)}" in lines, (refusal, lines)
        choice = re.match(r"^Invalid choice for '([^']+)'", refusal)
        if choice:
            assert any(line.startswith(f"{choice.group(1)}: ") for line in lines)


@pytest.mark.parametrize("preset", PRESETS)
def test_writes_byte_for_byte_what_copier_copy_writes(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path, preset: str
) -> None:
    answers = str(PRESETS_DIR / f"{preset}.yml")
    # The same folder name: the project name defaults to it.
    by_copier, by_new = tmp_path / "a" / preset, tmp_path / "b" / preset
    result = copier_cli(
        "copy", "--trust", "--defaults", "--data-file", answers, str(template_dir), str(by_copier)
    )
    assert result.returncode == 0, result.stderr
    status, lines = shipyard_new(capsys, template_dir, by_new, "--data-file", answers)
    assert status == 0, lines
    assert tree(by_new) == tree(by_copier)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [preset], "no leftovers"


def existing_app(root: Path) -> Path:
    """A service's repository before the kit: its README, ignores, manifest, lockfile, CI."""
    root.mkdir(parents=True)
    for name in ("README.md", "package.json", "package-lock.json"):
        shutil.copy(EXISTING_APP / name, root / name)
    shutil.copy(EXISTING_APP / "gitignore", root / ".gitignore")
    (root / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(EXISTING_APP / "ci.yml", root / ".github" / "workflows" / "ci.yml")
    (root / "src").mkdir()
    (root / "src" / "main.js").write_text("require('http').createServer().listen(3000);\n")
    init_repo(root, "the orders service")
    return root


APP_FILES = [
    "README.md",
    "package.json",
    "package-lock.json",
    ".github/workflows/ci.yml",
    "src/main.js",
]


def assert_app_kept(root: Path, before: dict[str, tuple[bytes, bool]]) -> None:
    """The app's files are as they were; .gitignore only gained the kit's missing lines."""
    after = tree(root)
    for name in APP_FILES:
        assert after[name] == before[name], f"{name} changed"
    old, new = before[".gitignore"][0].decode(), after[".gitignore"][0].decode()
    assert new.startswith(old), ".gitignore keeps every line of the app's, in order"
    added = new[len(old) :].splitlines()
    assert added[0] == "", "the kit's block is set apart"
    assert added[1] == copier_migrations.IGNORE_HEADER
    kit = (root / ".gitignore").read_text().splitlines()
    for pattern in (".env.*", "!.env.example", "backups/"):
        assert pattern in added
    assert "node_modules/" not in added, "already ignored by the app"
    assert "dist/" not in added, "the app's `dist` already covers it"
    assert kit.index("!.env.example") > kit.index(".env.*"), "the negation comes last"


def test_adding_the_kit_to_an_existing_repo_keeps_the_apps_files(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path
) -> None:
    app = existing_app(tmp_path / "orders-api")
    before = tree(app)

    # The kit's CI workflow is .github/workflows/ci.yml too: refused, one line, nothing written.
    status, lines = shipyard_new(capsys, template_dir, app)
    assert status == 2
    assert lines == [
        f".github/workflows/ci.yml: already in {app} and the kit writes its own; move yours "
        "aside (or answer so the kit leaves it out) and run again"
    ]
    assert tree(app) == before
    assert git(app, "status", "--porcelain", "--ignored") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders-api"], "no leftovers"

    status, lines = shipyard_new(capsys, template_dir, app, "-d", "ci_provider=none")
    assert status == 0, lines
    assert_app_kept(app, before)
    assert (app / "DEPLOYMENT.md").read_text().startswith("# Deploying Orders Api\n")
    findings = validate.validate(app)
    assert not findings, validate.report(findings)

    # Plain `copier copy --defaults` into the same repository: no prompt, the same result.
    by_copier = existing_app(tmp_path / "copier" / "orders-api")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("copier")),
            "copy",
            "--trust",
            "--defaults",
            "-d",
            "ci_provider=none",
            str(template_dir),
            ".",
        ],
        cwd=by_copier,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert tree(by_copier) == tree(app)


POETRY_APP = {
    "README.md": "# Billing\n\nThe team's own README.\n",
    ".gitignore": "__pycache__/\n.venv/\n",
    ".python-version": "3.11.9\n",
    "pyproject.toml": '[project]\nname = "billing"\nversion = "1.0.0"\nrequires-python = ">=3.11"\n'
    'dependencies = ["fastapi (>=0.115,<1)"]\n\n[tool.poetry]\npackage-mode = false\n',
    "poetry.lock": "# This file is automatically @generated by Poetry 2.1.1.\n",
    "app/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
}


def test_a_python_repo_gets_a_python_kit_from_its_own_files(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path
) -> None:
    """No runtime answer: pyproject.toml, poetry.lock and .python-version give it, where
    `copier copy --defaults` would write a Node.js kit (runtime's default)."""
    app = tmp_path / "billing"
    for name, text in POETRY_APP.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    init_repo(app, "the billing service")

    status = main(["new", "--template", str(template_dir), str(app)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert (
        f"shipyard new: from the files in {app}: runtime=python (pyproject.toml), "
        "python_package_manager=poetry (poetry.lock), python_version=3.11 (.python-version) "
        "(-d ANSWER=VALUE to answer otherwise)"
    ) in out
    answers = yaml.safe_load((app / ".copier-answers.yml").read_text())
    assert (answers["runtime"], answers["python_package_manager"], answers["python_version"]) == (
        "python", "poetry", "3.11",
    )  # fmt: skip
    assert "source=poetry.lock,target=poetry.lock" in (app / "Dockerfile").read_text()
    assert "ARG PYTHON_VERSION=3.11\n" in (app / "Dockerfile").read_text()
    for name, text in POETRY_APP.items():
        if name != ".gitignore":
            assert (app / name).read_text() == text, f"{name} changed"
    findings = validate.validate(app)
    assert not findings, validate.report(findings)


def test_files_pointing_two_ways_are_refused_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path
) -> None:
    app = tmp_path / "mixed"
    app.mkdir()
    (app / "go.mod").write_text("module example.com/mixed\n\ngo 1.26\n")
    (app / "package.json").write_text("{}\n")
    status, lines = shipyard_new(capsys, template_dir, app)
    assert status == 2
    assert lines == [f"runtime: {app} holds package.json and go.mod; answer -d runtime=node|go"]
    assert sorted(p.name for p in app.iterdir()) == ["go.mod", "package.json"]

    status, _ = shipyard_new(capsys, template_dir, app, "-d", "runtime=go")
    assert status == 0
    answers = yaml.safe_load((app / ".copier-answers.yml").read_text())
    assert (answers["runtime"], answers["go_version"]) == ("go", "1.26")


def test_a_collision_with_a_kit_folder_is_refused(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path
) -> None:
    app = tmp_path / "svc"
    app.mkdir()
    (app / "backup").write_text("a file where the kit puts its backup image folder\n")
    (app / "Dockerfile").write_text("FROM scratch\n")
    status, lines = shipyard_new(capsys, template_dir, app, "-d", "ci_provider=none")
    assert status == 2
    assert lines == [
        f"Dockerfile: already in {app} and the kit writes its own; move yours aside (or answer "
        "so the kit leaves it out) and run again",
        f"backup: is a file in {app}, where the kit needs a folder; move it aside and run again",
    ]
    assert sorted(p.name for p in app.iterdir()) == ["Dockerfile", "backup"]


def test_usage_errors_are_one_sentence(
    capsys: pytest.CaptureFixture[str], template_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "list.yml").write_text("- a\n")
    cases = [
        (["-d", "project_name"], "shipyard new: -d takes key=value; got 'project_name'"),
        (["--data-file", str(tmp_path / "list.yml")], "must be a YAML mapping of answer: value"),
        (["--data-file", str(tmp_path / "nope.yml")], "cannot read"),
    ]
    for args, message in cases:
        status, lines = shipyard_new(capsys, template_dir, tmp_path / "kit", *args)
        assert status == 2
        assert len(lines) == 1, lines
        assert message in lines[0]
    (tmp_path / "file").write_text("x")
    status, lines = shipyard_new(capsys, template_dir, tmp_path / "file")
    assert (status, lines) == (2, [f"shipyard new: {tmp_path / 'file'} exists and is not a folder"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "list.yml"]


def test_without_copier_the_extra_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "copier", None)  # as if not installed
    assert main(["new", str(tmp_path / "kit")]) == 2
    assert "pip install 'shipyard[new]'" in capsys.readouterr().err
    assert not (tmp_path / "kit").exists()


def test_merge_ignore_appends_only_what_is_missing(tmp_path: Path) -> None:
    ignore = tmp_path / ".gitignore"
    ignore.write_text("dist\n.env\n!.env.example\n*.log")  # no final newline
    kit = "# ours\nnode_modules/\ndist/\n.env\n.env.*\n!.env.example\n"
    added = copier_migrations.merge_ignore(ignore, kit)
    # `.env.*` is new, so the negation after it must follow it again.
    assert added == ["node_modules/", ".env.*", "!.env.example"]
    assert ignore.read_text() == (
        "dist\n.env\n!.env.example\n*.log\n\n"
        f"{copier_migrations.IGNORE_HEADER}\nnode_modules/\n.env.*\n!.env.example\n"
    )
    assert copier_migrations.merge_ignore(ignore, kit) == [], "idempotent"


def test_move_only_a_file_holding_the_text(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Team README\n")
    mark = "deployment kit was generated by [Shipyard]"
    assert not copier_migrations.move(tmp_path / "README.md", tmp_path / "DEPLOYMENT.md", mark)
    assert (tmp_path / "README.md").exists()
    (tmp_path / "README.md").write_text(f"# Kit\n\nThis repository's {mark}(...).\n")
    assert copier_migrations.move(tmp_path / "README.md", tmp_path / "DEPLOYMENT.md", mark)
    assert (tmp_path / "DEPLOYMENT.md").read_text().startswith("# Kit")


def test_a_relative_local_template_is_recorded_by_its_absolute_path(
    capsys: pytest.CaptureFixture[str],
    template_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `copier update` and the kit's pin read _src_path later, from the kit's own folder.
    monkeypatch.chdir(template_dir.parent)
    status, lines = shipyard_new(capsys, Path(template_dir.name), tmp_path / "svc")
    assert status == 0, lines
    recorded = yaml.safe_load((tmp_path / "svc" / ".copier-answers.yml").read_text())
    assert recorded["_src_path"] == str(template_dir.resolve())
    pin = (tmp_path / "svc" / "requirements-shipyard.txt").read_text().splitlines()[-1]
    # template_dir is a plain folder (no git): pip installs it as it is.
    assert pin == f"shipyard[validate] @ file://{template_dir.resolve()}"


def test_dest_dot_dot_takes_the_real_folder_name(
    capsys: pytest.CaptureFixture[str],
    template_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner = tmp_path / "orders-api" / "docs"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    status, lines = shipyard_new(capsys, template_dir, Path(".."))
    assert status == 0, lines
    recorded = yaml.safe_load((tmp_path / "orders-api" / ".copier-answers.yml").read_text())
    assert recorded["project_name"] == "Orders Api"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders-api"], "no staging leftovers"
