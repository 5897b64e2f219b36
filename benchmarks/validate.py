"""Validation speed: `shipyard validate` on one generated kit against the raw tools it wraps.

Prints the median wall time of the `shipyard validate` CLI (what users and CI run, import time
included) divided by the median of the summed wall times of the raw tool commands it wraps,
each run on its own, one after another, the way a hand-written CI script would: hadolint,
yamllint, docker-compose config, check-jsonschema per schema, actionlint, helm lint, and
`helm template | kubernetes-validate --strict` per values file and Kubernetes version.
Runs are interleaved so machine noise hits both sides alike. Target: <= 1.0 (concurrency eats
the orchestration overhead).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shipyard import validate
from shipyard.engines.proc import Command

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_template, load_preset, render_kit  # noqa: E402

# Every kind of artifact: Dockerfile, Compose, a chart with two values files, workflows.
PRESET = "pe-investor-portal"
TARGET = 1.0


@dataclass(frozen=True)
class RawRun:
    """One raw tool command as a hand-written CI script would run it, with what it reads."""

    command: Command
    stdin: str | None = None


def _raw_commands(root: Path) -> list[RawRun]:
    """The commands `validate` runs, with its batched kubernetes-validate calls unbatched.

    validate renders each chart into files and validates them per Kubernetes version in one
    call; by hand that is `helm template ... | kubernetes-validate -k V -` per values file.
    """
    with validate.record_commands() as recorded:
        findings = validate.validate(root)
    assert not findings, validate.report(findings)
    runs = []
    for command in recorded:
        name = Path(command.argv[0]).name
        if name == "kubernetes-validate":
            continue
        runs.append(RawRun(command))
        if name == "helm" and command.argv[1] == "template":
            rendered = subprocess.run(command.argv, cwd=command.cwd, capture_output=True, text=True)
            version = command.argv[command.argv.index("--kube-version") + 1]
            tool = validate.find_tool("kubernetes-validate")
            argv = (tool, "--strict", "--quiet", "-k", version, "-")
            runs.append(RawRun(Command(argv, cwd=command.cwd), rendered.stdout))
    return runs


def _time_raw(runs: list[RawRun]) -> float:
    start = time.perf_counter()
    for run in runs:
        subprocess.run(
            run.command.argv,
            cwd=run.command.cwd,
            input=run.stdin,
            capture_output=True,
            text=True,
        )
    return time.perf_counter() - start


def _time_validate(root: Path) -> float:
    shipyard = Path(sys.executable).with_name("shipyard")
    start = time.perf_counter()
    result = subprocess.run([str(shipyard), "validate", str(root)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        template = copy_template(Path(tmp, "shipyard"))
        root = render_kit(template, load_preset(PRESET), Path(tmp, "kit"))
        commands = _raw_commands(root)

        ours, raw = [], []
        for run in range(args.runs + 1):
            o = _time_validate(root)
            r = _time_raw(commands)
            if run:  # the first pair warms the page cache and bytecode
                ours.append(o)
                raw.append(r)

    ours_med, raw_med = statistics.median(ours), statistics.median(raw)
    ratio = ours_med / raw_med
    print(
        f"validate: shipyard validate {ours_med:.2f}s, {len(commands)} raw tool commands "
        f"{raw_med:.2f}s in sequence (median of {args.runs}, preset {PRESET})"
    )
    print(
        f"validate ratio (shipyard validate / sum of raw tools): {ratio:.2f} "
        f"(target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
