"""The Helm and Kubernetes checks: `helm lint --strict` on each chart, and each chart rendered
with each values file and validated against the Kubernetes API's own schemas."""

from __future__ import annotations

import importlib.util
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from shipyard.engines.proc import Result
from shipyard.validate.files import Chart, charts, rel
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.tools import (
    INSTALL_HINTS,
    ToolMissingError,
    each,
    find_tool,
    no_report,
    run_failure,
    run_tool,
)

# Kubernetes versions every chart is rendered for and validated against: the oldest we support
# and the newest the installed kubernetes-validate knows ("latest" asks it for its newest).
KUBERNETES_VERSIONS = ("1.28", "latest")
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


def _values_args(values: Path | None) -> list[str]:
    return ["--values", str(values)] if values else []


def _values_name(values: Path | None) -> str:
    return values.name if values else "default values"


def check_helm_lint(root: Path) -> list[Finding]:
    """`helm lint --strict` (which enforces values.schema.json) per chart and values file."""
    runs = [(chart, values) for chart in charts(root) for values in chart.values]

    def one(run: tuple[Chart, Path | None]) -> list[Finding]:
        chart, values = run
        argv = ["helm", "lint", "--strict", str(chart.path), *_values_args(values)]
        result = run_tool(argv, root)
        findings = []
        # Messages may continue on the lines after their "[LEVEL] file: message" line.
        for match in re.finditer(
            r"^\[(ERROR|WARNING)\] (.*?)(?=^\[[A-Z]+\]|^Error:|\n\n|\Z)",
            result.stdout + "\n" + result.stderr,
            re.MULTILINE | re.DOTALL,
        ):
            level, text = match.groups()
            file, _, message = text.partition(": ")
            where = rel(root, chart.path / file.strip()) if message else rel(root, chart.path)
            message = f"{oneline(message or text)} (with {_values_name(values)})"
            findings.append(Finding(where, None, "helm-lint", level.lower(), message))
        if problem := run_failure(result, reported=bool(findings)):
            findings.append(Finding(rel(root, chart.path), None, "helm-lint", "error", problem))
        return findings

    return [f for found in each(one, runs) for f in found]


def kubernetes_version(version: str) -> str:
    """`version`, or for "latest" the newest Kubernetes the installed kubernetes-validate knows."""
    if version != "latest":
        return version
    # Its schema folders (v1.37.0-local, ...) say it without importing it, when it lives here.
    spec = importlib.util.find_spec("kubernetes_validate")
    known = []
    for location in (spec.submodule_search_locations or []) if spec else []:
        known += [p.name for p in Path(location, "kubernetes-json-schema").glob("v*")]
    if not known:  # installed in another environment (pipx...): ask the tool itself
        result = run_tool(["kubernetes-validate", "--help"], Path.cwd())
        known = re.findall(r"Defaults to (\d+\.\d+)", oneline(result.stdout))
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
    versions = sorted(set(map(kubernetes_version, KUBERNETES_VERSIONS)))
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
            result = run_tool([*argv, *chart.release_args(), *_values_args(values)], root)
            values_name = _values_name(values)
            documents = list(_split_sources(result.stdout)) if result.returncode == 0 else []
            if not documents:
                # An application chart that renders nothing would deploy nothing; and with
                # nothing rendered, kubernetes-validate would have nothing to refuse.
                why = no_report(result) if result.returncode else "rendered no manifests"
                message = f"helm template with {values_name}: {why}"
                return [Finding(rel(root, chart.path), None, "helm", "template", message)]
            folder = Path(tmp, chart.name, values_name.replace(" ", "-"), version)
            for source, document in documents:
                out = folder / source
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a", encoding="utf-8") as handle:
                    handle.write(f"---\n{document}\n")
                sources[str(out)] = (rel(root, chart.path.parent / source), values_name)
                per_version[version][(chart.name, values_name, source)] = out
            return []

        findings += [f for found in each(render, runs) for f in found]

        def validate_batch(batch: tuple[tuple[str, ...], list[Path]]) -> list[Finding]:
            batch_versions, files = batch
            if not files:
                return []
            argv = ["kubernetes-validate", "--strict", "--quiet"]
            argv += [arg for version in batch_versions for arg in ("-k", version)]
            result = run_tool([*argv, *map(str, files)], root)
            return _kubernetes_findings(result, batch_versions, sources)

        batches = _version_batches(per_version)
        findings += [f for found in each(validate_batch, batches) for f in found]
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
    result: Result,
    versions: Sequence[str],
    sources: dict[str, tuple[str, str]],
) -> list[Finding]:
    # A problem not tied to one version (a file it cannot read, a crash) names them all.
    every_version = f"k8s-{'/'.join(versions)}"
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
            findings.append(Finding(".", None, "kubernetes-validate", every_version, line))
    # Exit 1 and 2 come with ERROR lines; a failure without one (a document it cannot parse,
    # a crash) is a finding, on the template it names when it names one.
    if problem := run_failure(result, reported=bool(findings), ok=(0, 1, 2)):
        file = "."
        for rendered, (template, values) in sources.items():
            if rendered in problem:
                file, problem = template, problem.replace(rendered, f"{template} (with {values})")
                break
        findings.append(Finding(file, None, "kubernetes-validate", every_version, problem))
    return findings
