"""This repository's sessions: `nox` runs what CI needs (lint, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
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
    # Two runs at once. The tests marked xdist_group("docker") share one dockerd, which a
    # machine-wide lock guards: they run in a pytest of their own, in one process (`-n 0` last,
    # so it wins over a -n in the arguments); under xdist a few of them could land on a second
    # worker, which would then wait on that lock until it timed out. Everything else runs on
    # every core meanwhile: the docker tests spend much of their time waiting on containers,
    # builds and health checks, so side by side the two take far less than one after the other.
    # Exit code 5 (nothing selected: the arguments named only one kind) is not a failure.
    # Not session.create_tmp(): it points TMPDIR of both runs at a folder too deep for the
    # servers' unix sockets.
    log = Path(tempfile.mkdtemp(prefix="shipyard-nox-"), "docker-tests.log")
    docker = _start(session, log, "pytest", "-m", "xdist_group", *session.posargs, "-n", "0")
    try:
        session.run(
            "pytest", "-n", "auto", "-m", "not xdist_group", *session.posargs, success_codes=[0, 5]
        )
    except KeyboardInterrupt:
        docker.send_signal(signal.SIGINT)  # pytest tears its servers and containers down
        raise
    finally:  # a failure above still waits for the docker tests: CI reports both at once
        code = docker.wait()
        session.log(f"the docker tests (xdist_group), exit code {code}:")
        print(log.read_text(errors="replace"), flush=True)
    if code not in (0, 5):
        session.error(f"the docker tests failed (exit code {code}); their output is above")


def _start(session: nox.Session, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Run a command of the session's venv in the background, its output into `log`."""
    env = {**os.environ, **{k: v for k, v in session.env.items() if v is not None}}
    env["PATH"] = os.pathsep.join([session.bin, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = session.virtualenv.location
    session.log(f"{' '.join(args)} (in the background, output in {log})")
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


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


# Packages `nox -s mutation` mutates, each with the fast tests (not marked slow) that judge its
# mutants. mutmut runs only the tests that reach a mutated function, in a fresh pytest session
# per mutant.
MUTATION_TESTS = {
    "backup": [
        "tests/test_backup.py",
        "tests/test_backup_faults.py",
        "tests/test_backup_files.py",
        "tests/test_backup_reports.py",
        "tests/test_backup_tasks.py",
        "tests/test_backup_metrics.py",
        "tests/test_backup_schedule.py",
        "tests/test_drill_record.py",
        "tests/test_pitr.py",
        "tests/test_cnpg_files.py",
    ],
    "tasks": ["tests/test_tasks.py", "tests/test_backup_tasks.py"],
    "validate": ["tests/test_validate_faults.py", "tests/test_validate.py"],
}
# What the tests read from the repository besides src/ and tests/ (renders need the template;
# the backup command's reference in docs/ is checked against its --help).
MUTATION_COPY = ["copier.yml", "template", "charts", "schemas", "tasks.py", "README.md", "docs"]
# mutmut's verdicts so far, which a run starts from and adds to (tests/mutation_ledger.py).
MUTATION_LEDGER = Path("docs/mutation-ledger.json")


@nox.session(python=PYTHON, default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut): `nox -s mutation -- backup` mutates the named packages
    (default: backup, tasks, validate) and prints every mutant that survived their fast tests;
    `-- backup/recovery backup/retention` mutates only those modules of a package;
    `-- backup/storage shipyard.backup.storage.x_f__mutmut_3` judges that mutant (again) only.

    Each set of packages gets a work folder, build/mutation/<names>, holding mutmut's config
    and its copy of the tree (mutants/); a rerun resumes there, also with fewer or other modules.
    `mutmut show NAME` in that folder (with this session's venv) prints a survivor's diff.
    """
    _install(session, "mutation")
    names = [a for a in session.posargs if "__mutmut_" in a]
    wanted = [a for a in session.posargs if a not in names] or list(MUTATION_TESTS)
    if names and len(names) == len(session.posargs):
        session.error("name the module or package of the mutants too: -- backup/storage NAME...")
    # "backup/recovery" -> package "backup", files "backup/recovery.py"; "backup" -> all of it.
    only = [f"{w}.py" if "/" in w else f"{w}/*" for w in wanted]
    packages = list(dict.fromkeys(w.partition("/")[0] for w in wanted))
    unknown = sorted(set(packages) - set(MUTATION_TESTS))
    unknown += [w for w in wanted if "/" in w and not Path("src/shipyard", f"{w}.py").is_file()]
    if unknown:
        session.error(
            f"unknown package(s) or module(s) {', '.join(unknown)}; known packages:"
            f" {', '.join(MUTATION_TESTS)} (a module: backup/recovery)"
        )
    tests = list(dict.fromkeys(t for p in packages for t in MUTATION_TESTS[p]))
    here = Path.cwd()
    work = here / "build" / "mutation" / "-".join(packages)
    work.mkdir(parents=True, exist_ok=True)
    # mutmut works on relative paths from where it runs: the tree is linked in, never changed.
    for name in ["src", "tests", "pyproject.toml", *MUTATION_COPY]:
        if not (work / name).is_symlink():
            (work / name).symlink_to(here / name)
    lines = ["[mutmut]", "source_paths = src/shipyard", "only_mutate ="]
    lines += [f"    src/shipyard/{o}" for o in only]
    lines += ["pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests)]
    lines += ["pytest_add_cli_args =", "    -m", "    not slow", "    -p", "    no:cacheprovider"]
    lines += ["also_copy =", *(f"    {name}" for name in MUTATION_COPY)]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")
    # mutmut copies files, not the links in src/ (shipyard/schemas): link them in its copy. Its
    # folder must exist before Python starts, or the import path below is never searched.
    for link in (here / "src").rglob("*"):
        copy = work / "mutants" / link.relative_to(here)
        if link.is_symlink() and not copy.is_symlink():
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.symlink_to(link.resolve())
    # A fresh clone's work folder starts from the ledger's verdicts; they go back into it at
    # the end, even of a run stopped with Ctrl-C (commit docs/mutation-ledger.json). nox does
    # not put this folder on the import path.
    sys.path.insert(0, str(here))
    from tests import mutation_ledger

    src = here / "src"
    modules = [p.relative_to(src).as_posix() for o in only for p in (src / "shipyard").glob(o)]
    seeded = mutation_ledger.seed(work, here / MUTATION_LEDGER, modules)
    session.log(f"{seeded} verdicts from {MUTATION_LEDGER}")
    if refreshed := mutation_ledger.refresh(work, modules):
        session.log(f"mutated for the first time here: {', '.join(refreshed)} (stats taken anew)")
    if changed := mutation_ledger.rejudge_unreached(work, modules, tests):
        session.log(f"changed since mutmut's stats: {', '.join(changed)} (stats taken anew)")
    try:
        _mutmut(session, work, names)
    finally:
        kept = mutation_ledger.save(work, here / MUTATION_LEDGER)
        session.log(f"{MUTATION_LEDGER}: {kept} verdicts")


def _mutmut(session: nox.Session, work: Path, names: list[str]) -> None:
    with session.chdir(work):
        # Tests that run `python -m shipyard.cli` in a child process import the mutated copy
        # too (the child inherits which mutant is active from the environment), and tell the
        # stats run which functions they reached (tests/mutation_hits/sitecustomize.py).
        hits = work / "tests" / "mutation_hits"
        env = {"PYTHONPATH": os.pathsep.join([str(work / "mutants" / "src"), str(hits)])}
        # PostgreSQL and the S3 server start once for the whole run, not once per mutant: one
        # pair per test session running at a time, plus one for mutmut's own first session,
        # each emptied before a session takes it (tests/servers/shared.py).
        children = len(os.sched_getaffinity(0))
        pairs = str(children + 1)
        shared = ["python", "-m", "tests.servers.shared", pairs]
        # interrupt_timeout None: on Ctrl-C the wrapper stops mutmut, then its servers; nox
        # must not kill it halfway (the servers would be left running).
        session.run(
            *shared, "mutmut", "run", "--max-children", str(children), *names,
            env=env, interrupt_timeout=None,
        )  # fmt: skip
        session.run("mutmut", "results")


def _render_presets(session: nox.Session) -> list[Path]:
    """`invoke render` (tasks.py) of the named presets, or all; returns their folders."""
    names = session.posargs or sorted(p.stem for p in Path("tests/presets").glob("*.yml"))
    session.run("invoke", "render", *(f"--preset={name}" for name in names))
    return [Path("build", "presets", name) for name in names]


def _install(session: nox.Session, group: str) -> None:
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, group))
