"""Migrations `copier update` runs when a template version renames an answer or moves a file.

Copier runs this file with its own interpreter (`_copier_python`) in the generated repo's
root, during the update's "before" stage, so it may use only the standard library and PyYAML
(a dependency of copier). Each step is idempotent: replaying an update changes nothing twice.

    python copier_migrations.py rename-answer OLD NEW [--answers-file .copier-answers.yml]
    python copier_migrations.py move OLD_PATH NEW_PATH
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

HEADER = "# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY\n"


def rename_answer(answers_file: Path, old: str, new: str) -> bool:
    """Rename answer `old` to `new`, keeping its value and the file's order; True if changed."""
    answers = yaml.safe_load(answers_file.read_text("utf-8")) or {}
    if old not in answers or new in answers:
        return False
    renamed = {(new if key == old else key): value for key, value in answers.items()}
    answers_file.write_text(
        HEADER + yaml.safe_dump(renamed, sort_keys=False, allow_unicode=True), "utf-8"
    )
    return True


def move(old: Path, new: Path) -> bool:
    """Move a file or folder; through git when tracked, so history and user edits follow."""
    if not old.exists() or new.exists():
        return False
    new.parent.mkdir(parents=True, exist_ok=True)
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(old)], capture_output=True, check=False
    )
    if tracked.returncode == 0:
        subprocess.run(["git", "mv", str(old), str(new)], check=True)
    else:
        shutil.move(old, new)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    rename = steps.add_parser("rename-answer", help="rename an answer in the answers file")
    rename.add_argument("old")
    rename.add_argument("new")
    rename.add_argument("--answers-file", type=Path, default=Path(".copier-answers.yml"))
    relocate = steps.add_parser("move", help="move a generated file or folder")
    relocate.add_argument("old", type=Path)
    relocate.add_argument("new", type=Path)
    args = parser.parse_args(argv)

    if args.step == "rename-answer":
        changed = rename_answer(args.answers_file, args.old, args.new)
        what = f"answer {args.old} -> {args.new}"
    else:
        changed = move(args.old, args.new)
        what = f"{args.old} -> {args.new}"
    print(f"shipyard migration: {what}: {'done' if changed else 'nothing to do'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
