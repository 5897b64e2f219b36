"""Render speed: the full-featured preset against a one-file copier template, side by side.

Prints the ratio of median wall times of `copier copy` (the CLI a user runs, so import time
counts for both). Runs are interleaved so machine noise hits both sides alike. Target: <= 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_template  # noqa: E402

PRESET = REPO / "tests" / "presets" / "project-management.yml"
TARGET = 1.5


def _copier(template: Path, dst: Path, *extra: str) -> float:
    copier = Path(sys.executable).with_name("copier")
    argv = [
        str(copier),
        "copy",
        "--trust",
        "--defaults",
        "--quiet",
        *extra,
        str(template),
        str(dst),
    ]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Both templates as plain folders, so neither pays for a git clone.
        ours = copy_template(work / "shipyard")
        baseline = work / "one-file"
        baseline.mkdir()
        (baseline / "copier.yml").write_text("name:\n  type: str\n  default: demo\n")
        (baseline / "README.md.jinja").write_text("# {{ name }}\n")

        ours_s, base_s = [], []
        for run in range(args.runs + 1):
            b = _copier(baseline, work / f"b{run}")
            o = _copier(ours, work / f"o{run}", "--data-file", str(PRESET))
            if run:  # the first pair warms the page cache and bytecode
                base_s.append(b)
                ours_s.append(o)
        files = sum(1 for p in (work / "o0").rglob("*") if p.is_file())

    ours_med, base_med = statistics.median(ours_s), statistics.median(base_s)
    ratio = ours_med / base_med
    print(
        f"render: full-featured preset {ours_med:.2f}s, one-file template {base_med:.2f}s "
        f"(median of {args.runs}, {files} files rendered)"
    )
    print(
        f"render ratio (full preset / one-file template): {ratio:.2f} "
        f"(target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
