"""`invoke render-diff` (this repository's tasks.py): the check that a refactor of the template
renders every preset byte-identical. It passes on an unchanged template and fails, showing the
change, on an edited one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import git, init_repo


def test_render_diff_fails_on_a_template_change_and_passes_without(
    template_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "shipyard"
    shutil.copytree(template_dir, repo, symlinks=True)
    init_repo(repo, "template")

    def render_diff(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", "render-diff", "--preset", "minimal", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )

    same = render_diff()
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.startswith("render-diff: 1 preset(s) render identically to HEAD ("), (
        same.stdout
    )

    # Uncommitted edits: one line more in a file, and a file made executable.
    dockerignore = repo / "template" / ".dockerignore.jinja"
    dockerignore.write_text(dockerignore.read_text() + "extra-line\n")
    (repo / "template" / ".env.example.jinja").chmod(0o755)
    changed = render_diff()
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "--- a/minimal/.dockerignore\n+++ b/minimal/.dockerignore\n" in changed.stdout
    assert "\n+extra-line" in changed.stdout
    assert re.search(r"^mode a/minimal/\.env\.example: 6[46]4 -> 755$", changed.stdout, re.M)
    assert "renders differently from HEAD" in changed.stderr

    # Committed, the edit is the new HEAD; --base names the commit before it.
    git(repo, "commit", "-q", "-a", "-m", "edit the template")
    assert render_diff().returncode == 0
    older = render_diff("--base", "HEAD~1")
    assert older.returncode == 1, older.stdout + older.stderr
    assert "\n+extra-line" in older.stdout
