"""JSON Schemas on YAML files: check-jsonschema's vendored schemas (Compose, GitHub) and our
own (schemas/), for shipyard.yaml and the Copier answers file.

A schema error names a path of keys; the finding points at that key's line. `config` (with
jsonschema, ~0.2 s to import) is imported inside the checks, so the command starts its tools
without waiting for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shipyard.validate.files import rel
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.tools import no_report, run_failure, run_tool
from shipyard.validate.yaml_lines import jsonpath_keys, unexpected_key, yaml_line


def vendored_schema(root: Path, schema: str, paths: Sequence[Path]) -> list[Finding]:
    """check-jsonschema with one of its built-in (offline) schemas on `paths`."""
    if not paths:
        return []
    # --verbose adds the deepest sub-error, which names the offending key and value.
    argv = ["check-jsonschema", "--builtin-schema", schema, "-o", "json", "--verbose"]
    result = run_tool([*argv, *(rel(root, p) for p in paths)], root)
    rule = schema.removeprefix("vendor.")
    try:
        report = json.loads(result.stdout)  # a JSON report even when clean: none is a failure
    except json.JSONDecodeError:
        return [Finding(".", None, "check-jsonschema", rule, no_report(result))]
    findings = []
    for error in report.get("errors", []):
        file = rel(root, error["filename"])
        if error.get("has_sub_errors") and "best_deep_match" in error:
            error = {**error, **error["best_deep_match"]}
        keys = jsonpath_keys(error["path"])
        line = yaml_line(root / file, [*keys, *unexpected_key(error["message"])])
        message = f"{'.'.join(map(str, keys)) or '(top level)'}: {error['message']}"
        findings.append(Finding(file, line, "check-jsonschema", rule, message))
    findings += [
        Finding(rel(root, e["filename"]), None, "check-jsonschema", rule, e["message"])
        for e in report.get("parse_errors", [])
    ]
    if problem := run_failure(result, reported=bool(findings)):
        findings.append(Finding(".", None, "check-jsonschema", rule, problem))
    return findings


def _own_schema(
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
        message = oneline(
            str(exc).replace(f"{path}: ", "").replace(' in "<unicode string>",', " at")
        )
        # The last position a YAML parser names is where it gave up: the line to look at.
        lines = re.findall(r"line (\d+)", message)
        return [Finding(file, int(lines[-1]) if lines else None, tool, "yaml", message)]

    findings = []
    for error in config.validator(schema).iter_errors(document):
        keys = list(error.absolute_path)
        where = ".".join(str(k) for k in keys) or "(top level)"
        line = yaml_line(path, [*keys, *unexpected_key(error.message)])
        findings.append(Finding(file, line, tool, "schema", f"{where}: {error.message}"))
    return findings


def check_shipyard_yaml(root: Path) -> list[Finding]:
    """shipyard.yaml against schemas/shipyard.schema.json."""
    from shipyard import config

    return _own_schema(root, config.CONFIG_FILE, "shipyard", "shipyard", config.load_yaml)


def check_answers(root: Path) -> list[Finding]:
    """.copier-answers.yml against schemas/answers.schema.json (`copier update` replays it)."""
    from shipyard import config

    return _own_schema(root, config.ANSWERS_FILE, "answers", "answers", _load_like_copier)


def _load_like_copier(path: Path) -> object:
    # Copier reads its answers with PyYAML (YAML 1.1): `_commit: 240e508` is a string there,
    # while a YAML 1.2 loader would see a float.
    import yaml

    return yaml.safe_load(path.read_text("utf-8"))
