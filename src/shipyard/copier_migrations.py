"""Steps copier runs in a generated repo: migrations between releases, and the ignore merge.

Copier runs this file with its own interpreter (`_copier_python`) in the generated repo's
root: `_migrations` during an update's "before" stage (a release renamed an answer or moved a
file), `_tasks` after every copy and update. It may use only the standard library and PyYAML
(a dependency of copier). Each step is idempotent: replaying an update changes nothing twice.

    python copier_migrations.py rename-answer OLD NEW [--answers-file .copier-answers.yml]
    python copier_migrations.py keep-answer NAME VALUE [--answers-file .copier-answers.yml]
    python copier_migrations.py move OLD_PATH NEW_PATH [--if-contains TEXT]
    python copier_migrations.py merge-ignore .gitignore KIT_LINES
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
# Written above the kit's ignore lines when they join a repository's own .gitignore.
IGNORE_HEADER = (
    "# Added by the Shipyard deployment kit (copier re-adds any of these that go missing)"
)


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


def keep_answer(answers_file: Path, name: str, value: str) -> bool:
    """Record `name: value` unless the file has that answer; True if changed. For a question a
    release adds whose default would change what an existing kit does: the kit keeps
    behaving as it did, and a new kit gets the new default."""
    answers = yaml.safe_load(answers_file.read_text("utf-8")) or {}
    if name in answers:
        return False
    answers[name] = yaml.safe_load(value)  # typed as the answer is: `false` a bool, `none` text
    answers_file.write_text(
        HEADER + yaml.safe_dump(answers, sort_keys=False, allow_unicode=True), "utf-8"
    )
    return True


def move(old: Path, new: Path, if_contains: str | None = None) -> bool:
    """Move a file or folder; through git when tracked, so history and user edits follow.

    With `if_contains`, only a file holding that text moves: a file the kit generated, not one
    the team has since replaced with its own under the same name.
    """
    if not old.exists() or new.exists():
        return False
    if if_contains is not None and (
        not old.is_file() or if_contains not in old.read_text("utf-8", errors="replace")
    ):
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


def merge_ignore(path: Path, kit_text: str) -> list[str]:
    """Append the kit's ignore patterns missing from `path`; returns the lines appended.

    The app's own lines stay as they are, in their order: adding the kit to an existing repo
    (or a release adding a pattern) only appends. A negation (`!.env.example`) qualifies the
    patterns before it, so it is appended again whenever one of those is, else the appended
    pattern would override it (gitignore: the last matching line wins).
    """
    text = path.read_text("utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing: list[str] = []
    for line in (raw.strip() for raw in kit_text.splitlines()):
        if not line or line.startswith("#"):
            continue
        negation = line.startswith("!")
        # `dist` already ignores everything `dist/` would (a folder or a file of that name).
        covered = line in present or (line.endswith("/") and line[:-1] in present)
        if not covered or (negation and any(not m.startswith("!") for m in missing)):
            missing.append(line)
    if missing:
        block = "\n".join([IGNORE_HEADER, *missing]) + "\n"
        separator = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        path.write_text(text + separator + block, "utf-8")
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    rename = steps.add_parser("rename-answer", help="rename an answer in the answers file")
    rename.add_argument("old")
    rename.add_argument("new")
    rename.add_argument("--answers-file", type=Path, default=Path(".copier-answers.yml"))
    keep = steps.add_parser("keep-answer", help="record an answer the kit does not have yet")
    keep.add_argument("name")
    keep.add_argument("value")
    keep.add_argument("--answers-file", type=Path, default=Path(".copier-answers.yml"))
    relocate = steps.add_parser("move", help="move a generated file or folder")
    relocate.add_argument("old", type=Path)
    relocate.add_argument("new", type=Path)
    relocate.add_argument("--if-contains", metavar="TEXT", help="move only a file holding TEXT")
    ignore = steps.add_parser("merge-ignore", help="append the kit's missing ignore patterns")
    ignore.add_argument("file", type=Path)
    ignore.add_argument("kit_lines", help="the kit's ignore file, as text")
    args = parser.parse_args(argv)

    if args.step == "merge-ignore":
        # Silent: `git diff` shows what it appended, and `shipyard new` runs it on a staged copy.
        merge_ignore(args.file, args.kit_lines)
        return 0
    if args.step == "rename-answer":
        changed = rename_answer(args.answers_file, args.old, args.new)
        what = f"answer {args.old} -> {args.new}"
    elif args.step == "keep-answer":
        changed = keep_answer(args.answers_file, args.name, args.value)
        what = f"answer {args.name}: {args.value}"
    else:
        changed = move(args.old, args.new, args.if_contains)
        what = f"{args.old} -> {args.new}"
    print(f"shipyard migration: {what}: {'done' if changed else 'nothing to do'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
