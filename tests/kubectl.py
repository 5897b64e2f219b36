"""A stand-in for `kubectl`, for the tasks that drive a cluster (no machine here reaches a
Kubernetes API server: the one fake the rules allow).

It logs every call (its arguments, and the manifest a `--filename` names, read at call time)
and answers by rules the test gives: the first rule whose `prefix` starts the arguments prints
its `stdout` (a list: one answer per call, the last repeated) and exits with its `code`.
Arguments no rule matches print nothing and succeed, as most kubectl writes do.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCRIPT = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
log = Path(os.environ["KUBECTL_LOG"])
entry = {{"argv": args}}
if "--filename" in args:
    entry["manifest"] = Path(args[args.index("--filename") + 1]).read_text()
with log.open("a") as out:
    out.write(json.dumps(entry) + "\\n")
for i, rule in enumerate(json.loads(Path(os.environ["KUBECTL_RULES"]).read_text())):
    if args[: len(rule["prefix"])] == rule["prefix"]:
        answers = rule["stdout"] if isinstance(rule["stdout"], list) else [rule["stdout"]]
        seen = log.with_suffix(".rule%d" % i)
        n = int(seen.read_text()) if seen.exists() else 0
        seen.write_text(str(n + 1))
        sys.stdout.write(answers[min(n, len(answers) - 1)])
        sys.exit(rule.get("code", 0))
"""


def rule(prefix: Sequence[str], stdout: str | list[str] = "", code: int = 0) -> dict[str, Any]:
    return {"prefix": list(prefix), "stdout": stdout, "code": code}


@dataclass(frozen=True)
class Kubectl:
    folder: Path

    @classmethod
    def install(cls, folder: Path) -> Kubectl:
        (folder / "bin").mkdir(parents=True, exist_ok=True)
        script = folder / "bin" / "kubectl"
        script.write_text(SCRIPT.format(python=sys.executable))
        script.chmod(0o755)
        return cls(folder)

    @property
    def log(self) -> Path:
        return self.folder / "calls.log"

    def env(self, rules: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """The environment a task runs in with these rules, and a fresh log."""
        for old in self.folder.glob("calls.*"):
            old.unlink()
        (self.folder / "rules.json").write_text(json.dumps(list(rules)))
        return {
            "PATH": f"{self.folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "KUBECTL_LOG": str(self.log),
            "KUBECTL_RULES": str(self.folder / "rules.json"),
        }

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def commands(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def applied(self) -> list[dict[str, Any]]:
        """Every manifest given with --filename, parsed (JSON or YAML)."""
        return [yaml.safe_load(c["manifest"]) for c in self.calls() if "manifest" in c]
