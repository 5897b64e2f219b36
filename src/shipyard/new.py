"""`shipyard new DEST`: scaffold a kit without a prompt, for scripts and CI.

The same answers as `copier copy` (`--data-file`, `-d key=value`), and the same files: copier
renders them. What it adds is a refusal that says everything at once and writes nothing:

- every answer is checked first, by copier's own questions (type, choices, the Jinja
  validators of copier.yml) and by `schemas/answers.schema.json`; each problem is one line,
  `answer: what to change`, and the exit status is 2;
- the kit is rendered in a folder of its own beside DEST and moved in only when none of its
  files collides with one already there (the app's Dockerfile, its CI workflow...); each
  collision is one line, exit 2. Files the template keeps when they exist (`_skip_if_exists`:
  the app's .gitignore) are copied into the render first, so copier's own step merges them
  exactly as `copier copy` into DEST would.

`copier copy` stays the interactive way; unanswered questions here take their defaults,
except those DEST's own files answer (its runtime, package manager, version pin: detect.py).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard import detect

if TYPE_CHECKING:
    from copier._main import Worker

# Where `shipyard new` takes the template from unless --template says otherwise: the
# canonical source users give `copier copy` too (README, Quick start).
TEMPLATE = "gh:ourorg/shipyard"
# copier is an optional extra: generated repos and the backup image install shipyard for its
# tasks and engine, which never scaffold, and copier brings a prompt toolkit, pydantic and
# plumbum with it. Its bound is tight because the answer checks below use copier's internal
# Question class (the very code `copier copy` validates with) rather than a copy of it.
MISSING_COPIER = (
    "shipyard new needs copier: python3 -m pip install 'shipyard[new]' (or pip install copier)"
)
# How a value that copier could not read as the question's type is described.
TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "json": "valid JSON",
    "yaml": "valid YAML",
    "str": "text",
    "path": "a path",
}


class UsageError(Exception):
    """A command line or data file shipyard new cannot read; the message is the sentence."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `new` to the `shipyard` parser."""
    parser = commands.add_parser(
        "new",
        help="scaffold a kit into DEST without prompting (copier copy --defaults, checked)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("dest", type=Path, metavar="DEST", help="folder to write the kit into")
    parser.add_argument(
        "--template", default=TEMPLATE, metavar="SRC", help=f"template source (default {TEMPLATE})"
    )
    parser.add_argument("--vcs-ref", metavar="REF", help="template tag or commit (default: newest)")
    parser.add_argument(
        "--data-file", type=Path, metavar="F", help="YAML file of answers (like copier's)"
    )
    parser.add_argument(
        "-d",
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one answer; wins over --data-file (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed `shipyard new`; 0 written, 2 refused (nothing written), 1 failed."""
    try:
        data = load_data(args.data_file, args.data)
    except UsageError as exc:
        print(f"shipyard new: {exc}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("copier") is None:
        print(f"shipyard new: {MISSING_COPIER}", file=sys.stderr)
        return 2
    try:
        return scaffold(args.template, args.vcs_ref, data, args.dest)
    except KeyboardInterrupt:
        # The render folder is gone with its `with`, and a move in progress was undone.
        print(f"shipyard new: interrupted; {args.dest} is as it was", file=sys.stderr)
        return 130


def _shown(src: str) -> str:
    """`src` fit for a log line: without the user:password@ of an https URL (a CI token)."""
    return re.sub(r"^((?:git\+)?https?://)[^/@]*@", r"\1", src)


def load_data(data_file: Path | None, pairs: Sequence[str]) -> dict[str, Any]:
    """Answers as copier's CLI reads them: the file's mapping, then each -d key=value (text)."""
    import yaml

    data: dict[str, Any] = {}
    if data_file is not None:
        try:
            # PyYAML, as copier reads --data-file: the same text gives the same answers.
            loaded = yaml.safe_load(data_file.read_text("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read {data_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{data_file} is not valid YAML: {_oneline(str(exc))}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"{data_file} must be a YAML mapping of answer: value")
        data.update(loaded or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-d takes key=value; got {pair!r}")
        data[key] = value
    return data


def scaffold(src: str, vcs_ref: str | None, data: Mapping[str, Any], dest: Path) -> int:
    """Check the answers, render beside `dest`, move in; see the module's docstring."""
    from copier._main import Worker

    # A local template is recorded (_src_path) by its absolute path: `copier update` and the
    # kit's pin read it later from the kit's folder, where a relative path means nothing.
    if Path(src).expanduser().is_dir():
        src = str(Path(src).expanduser().resolve())
    if dest.exists() and not dest.is_dir():
        print(f"shipyard new: {dest} exists and is not a folder", file=sys.stderr)
        return 2
    # Resolved, so `.` and `..` have their real names (the project name defaults to it).
    dest = dest.expanduser().resolve()
    # The render goes to a sibling folder (same filesystem: moving in is a rename) named like
    # DEST, since the project name defaults to the destination folder's name.
    base = next(p for p in dest.parents if p.is_dir())
    try:
        staging = tempfile.TemporaryDirectory(prefix=".shipyard-new-", dir=base)
    except OSError as exc:
        print(f"shipyard new: cannot write in {base}: {exc.strerror}", file=sys.stderr)
        return 1
    with staging as tmp:
        stage = Path(tmp) / dest.name
        try:
            with Worker(
                src_path=src,
                dst_path=stage,
                data=dict(data),
                vcs_ref=vcs_ref,
                defaults=True,
                unsafe=True,
                quiet=True,
            ) as worker:
                if not _take_detected(worker, dest):
                    return 2
                problems = answer_problems(worker, src)
                if problems:
                    print("\n".join(problems), file=sys.stderr)
                    return 2
                kept = _seed_kept_files(worker, dest, stage)
                worker.run_copy()
        except Exception as exc:  # copier's, git's, Jinja's: the command's one boundary
            # The template cannot be fetched or rendered, or one of its tasks failed.
            print(f"shipyard new: {_shown(src)}: {_oneline(str(exc))}", file=sys.stderr)
            return 1
        try:
            collisions = _collisions(stage, dest, kept)
        except OSError as exc:
            print(f"shipyard new: cannot read {dest}: {exc}", file=sys.stderr)
            return 1
        if collisions:
            print("\n".join(collisions), file=sys.stderr)
            return 2
        try:
            count = _move_in(stage, dest, kept)
        except OSError as exc:
            print(f"shipyard new: writing {dest} failed, nothing kept: {exc}", file=sys.stderr)
            return 1
    print(f"shipyard new: {count} files written to {dest}; DEPLOYMENT.md says what comes next")
    return 0


def _take_detected(worker: Worker, dest: Path) -> bool:
    """Add to the worker's answers what DEST's files answer (detect.py) and the user did not,
    saying so; False when the files are refused (the sentence printed)."""
    offered = {
        name: [str(c) for c in (choices.values() if isinstance(choices, dict) else choices)]
        for name, details in worker.template.questions_data.items()
        if isinstance(choices := details.get("choices"), dict | list)
    }
    found = detect.answers(dest, worker.data, offered)
    if found.problem:
        print(found.problem, file=sys.stderr)
        return False
    for note in found.notes:
        print(f"shipyard new: note: {note}")
    if found.answers:
        print(
            f"shipyard new: from the files in {dest}: {found.describe()} "
            "(-d ANSWER=VALUE to answer otherwise)"
        )
        worker.data = {**found.answers, **worker.data}
    return True


def answer_problems(worker: Worker, src: str) -> list[str]:
    """Every problem with the answers, one `answer: what to change` line each.

    This walks the questions as copier's `_ask` does with --defaults, with copier's own
    Question (casting, choices, the Jinja validators), but records a refusal and goes on where
    copier stops at the first. A default computed from a refused answer (the slug from an
    empty project name) is not reported again: fixing the answer fixes it.
    """
    from copier._types import MISSING
    from copier._user_data import AnswersMap, Question

    answers = AnswersMap(
        user_defaults=worker.user_defaults,
        init=worker.data,
        last={},
        metadata=worker.template.metadata,
        external=worker._external_data(),
    )
    worker.answers = answers
    problems: list[str] = []
    refused: set[str] = set()
    for name, details in worker.template.questions_data.items():
        question = Question(
            answers=answers,
            context=worker._render_context(),
            jinja_env=worker.jinja_env,
            settings=worker.settings,
            var_name=name,
            **details,
        )
        given = name in answers.init
        value: Any = answers.init.get(name, MISSING)
        try:
            if not question.get_when():
                answers.hide(name)
                if question.get_default() is MISSING:
                    continue
            if given:
                value = question.parse_answer(value)
                question.validate_answer(value)
            else:
                value = question.get_default()
                if value is MISSING:
                    raise ValueError("needs an answer")
            answers.user[name] = value
        except Exception as exc:  # copier refuses with several unrelated types
            # Later questions may read this one: keep what was given, parsed if it could be.
            if value is not MISSING:
                answers.user[name] = value
            inherited = not given and any(
                re.search(rf"\b{re.escape(r)}\b", str(details.get("default", ""))) for r in refused
            )
            refused.add(name)
            if not inherited:
                problems.append(f"{name}: {_refusal(question, exc, value)}")
    # The schema mirrors the validators: it speaks only of answers copier had no word against.
    schema = _schema_problems(worker, answers, src)
    problems += [line for name, line in schema if name not in refused]
    return problems


def _refusal(question: Any, exc: Exception, value: Any) -> str:
    """Copier's sentence without its 'Validation error for question ...' prefix."""
    message = _oneline(str(exc))
    stripped = re.sub(r"^Validation error for question '[^']*': ", "", message)
    if stripped != message:
        return stripped
    choice = re.match(r"^Invalid choice for '[^']*': (.*)$", message)
    if choice:
        return f"not one of the choices: {choice.group(1)}"
    if isinstance(exc, TypeError | ValueError) and not message.startswith("needs"):
        try:
            kind = TYPE_WORDS.get(question.get_type_name(), "valid")
        except Exception:  # the type itself did not render
            return message
        return f"{value!r} is not {kind}"
    return message


def _schema_problems(worker: Worker, answers: Any, src: str) -> list[tuple[str, str]]:
    """The answers copier would record, against schemas/answers.schema.json.

    Copier ignores data that answers no question; here a misspelt answer name is refused,
    since the answer it meant would silently take its default.
    """
    from shipyard import config

    questions = worker.template.questions_data
    recorded = {
        key: value
        for key, value in answers.user.items()
        if key not in answers.hidden and key in questions
    }
    # The template's derived facts (`when: false`, e.g. uses_helm) are no questions either:
    # copier would let given data override one, contradicting the answers it derives from.
    facts = {key for key, details in questions.items() if details.get("when") is False}
    unknown = {
        key: value for key, value in answers.init.items() if key not in questions or key in facts
    }
    document = {"_src_path": src, **recorded, **unknown}
    problems: list[tuple[str, str]] = []
    schema = config.schema("answers")
    for error in config.validator("answers").iter_errors(document):
        if error.validator == "additionalProperties":
            problems += [
                (key, f"{key}: the template derives it from other answers; do not give it")
                if key in facts
                else (key, f"{key}: not a question of this template; check the spelling")
                for key in sorted(unknown)
            ]
            continue
        name = str(error.absolute_path[0]) if error.absolute_path else "answers"
        if error.validator == "required" and not error.absolute_path:
            name = str(re.sub(r"^'(.*)' is a required property$", r"\1", error.message))
        why = error.message
        # A rule across answers (allOf) explains itself in its description.
        if error.schema_path and error.schema_path[0] == "allOf":
            why = schema["allOf"][error.schema_path[1]].get("description", why)
        problems.append((name, f"{name}: {_oneline(why)}"))
    return list(dict.fromkeys(problems))


def _seed_kept_files(worker: Worker, dest: Path, stage: Path) -> set[Path]:
    """Copy DEST's files the template keeps if they exist into the render; their paths.

    Copier then treats them as it would in DEST: kept, and merged by the template's tasks.
    The patterns are globbed as written (the template's are plain paths).
    """
    kept: set[Path] = set()
    for pattern in worker.all_skip_if_exists:
        for path in dest.glob(pattern):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(dest)
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, stage / rel)
                kept.add(rel)
    return kept


def _files(root: Path) -> list[Path]:
    """Every file and symlink under root, relative, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        links = [d for d in dirs if (here / d).is_symlink()]
        found += [(here / name).relative_to(root) for name in [*files, *links]]
    return sorted(found)


def _collisions(stage: Path, dest: Path, kept: set[Path]) -> list[str]:
    """One line per rendered file that would replace something of DEST's."""
    problems = []
    for rel in _files(stage):
        if rel in kept:
            continue
        target = dest / rel
        blocker = next(
            (p for p in reversed(target.parents) if p.is_relative_to(dest) and p.is_file()),
            None,
        )
        if blocker is not None:
            problems.append(
                f"{blocker.relative_to(dest)}: is a file in {dest}, where the kit needs a "
                "folder; move it aside and run again"
            )
        elif target.is_symlink() or target.is_dir():
            problems.append(f"{rel}: already in {dest}; move it aside and run again")
        elif target.exists() and not filecmp.cmp(stage / rel, target, shallow=False):
            problems.append(
                f"{rel}: already in {dest} and the kit writes its own; move yours aside "
                "(or answer so the kit leaves it out) and run again"
            )
    return list(dict.fromkeys(problems))


def _move_in(stage: Path, dest: Path, kept: set[Path]) -> int:
    """Move the render into DEST; on any failure put DEST back as it was, then raise."""
    created: list[Path] = []
    moved: list[Path] = []
    originals: dict[Path, bytes] = {rel: (dest / rel).read_bytes() for rel in kept}
    try:
        for rel in _files(stage):
            target = dest / rel
            for folder in reversed(target.parents):
                if not folder.exists():
                    folder.mkdir()
                    created.append(folder)
            if target.exists() and rel not in kept:
                continue  # identical to what the kit renders
            (stage / rel).replace(target)
            moved.append(rel)
    except BaseException:  # Ctrl-C too: DEST is put back before the exception goes on
        for rel in moved:
            if rel in originals:
                (dest / rel).write_bytes(originals[rel])
            else:
                (dest / rel).unlink(missing_ok=True)
        for folder in reversed(created):
            folder.rmdir()
        raise
    return len(moved)


def _oneline(text: str) -> str:
    return " ".join(text.split())
