"""This repository's own tasks: `invoke --list`.

invoke render            render every preset into build/presets (what tests check)
invoke render-diff       diff every preset's render from the last commit with the working tree's
invoke release 0.2.0     tag a release; generated repos pin the package at that tag
invoke action-pins       record the commit of each pinned action's tag (needs the network)
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent
PRESETS = REPO / "tests" / "presets"
# The workflows' third-party actions, pinned as (repo, commit SHA, tag), and the independent
# record of which commit each tag is that tests/test_workflows.py holds the pins to.
ACTIONS = REPO / "template" / "includes" / "actions.jinja"
ACTION_PINS = REPO / "tests" / "fixtures" / "action-pins.json"
PINNED_TAG = re.compile(r"\('([^']+)', '[0-9a-f]{40}', '(v\d+\.\d+\.\d+)'\)")


@task(
    iterable=["preset"],
    help={"preset": "a preset name, repeatable (default: all)", "out": "output folder"},
)
def render(c: Context, preset: list[str], out: str = "build/presets") -> None:
    """Render presets from the working tree, replacing earlier renders."""
    for name in _preset_names(preset, "render"):
        dst = REPO / out / name
        shutil.rmtree(dst, ignore_errors=True)  # a file the template dropped must not linger
        # vcs_ref HEAD renders uncommitted template edits too.
        _copy(name, dst, "HEAD")
        print(f"rendered {name} -> {dst.relative_to(REPO)}")


@task(
    iterable=["preset"],
    help={
        "base": "the commit to compare with, e.g. main (default HEAD: the last commit)",
        "preset": "a preset name, repeatable (default: all)",
    },
)
def render_diff(c: Context, preset: list[str], base: str = "HEAD") -> None:
    """Render presets from BASE and from the working tree; fail on any difference."""
    names = _preset_names(preset, "render-diff")
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode:
        raise Exit(f"render-diff: '{base}' is not a commit of {REPO}", code=2)
    sha = found.stdout.strip()
    diffs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="render-diff-") as tmp:
        for name in names:
            # A commit, not the name HEAD: copier adds uncommitted edits to HEAD only.
            old = _files(_copy(name, Path(tmp, "base", name), sha), Path(tmp, "base", name))
            new = _files(_copy(name, Path(tmp, "work", name), "HEAD"), Path(tmp, "work", name))
            diffs += _diff(name, old, new)
    if diffs:
        print("\n".join(diffs))
        raise Exit(f"render-diff: the working tree renders differently from {base} (above)")
    print(f"render-diff: {len(names)} preset(s) render identically to {base} ({sha[:12]})")


def _preset_names(given: list[str], task_name: str) -> list[str]:
    names = given or sorted(p.stem for p in PRESETS.glob("*.yml"))
    for name in names:
        if not (PRESETS / f"{name}.yml").is_file():
            raise Exit(f"{task_name}: no preset {name} in {PRESETS}", code=2)
    return names


def _copy(name: str, dst: Path, vcs_ref: str) -> Any:
    """`copier copy` of the preset NAME from this repository at vcs_ref; copier's Worker."""
    from copier import run_copy
    from ruamel.yaml import YAML

    answers = YAML(typ="safe").load((PRESETS / f"{name}.yml").read_text())
    return run_copy(
        str(REPO), dst, data=answers, defaults=True, unsafe=True, quiet=True, vcs_ref=vcs_ref
    )


# The commit a render came from differs by construction: .copier-answers.yml records it
# (`_commit`, quoted when YAML would read that hash as a number) and requirements-shipyard.txt
# pins the package at it. Each side's own commit (copier's describe and full hash, with any
# quotes around it) is replaced by this mark in every file, so those lines still compare how
# the commit is written, but not which commit it is.
COMMIT_MARK = b"<commit>"


def _files(worker: Any, root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a render: relative path -> (permission bits, content, commit masked)."""
    commits = [c.encode() for c in (worker.template.commit_hash, worker.template.commit) if c]
    files: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        content = path.read_bytes()
        for commit in commits:  # the full hash first: the describe may be its prefix
            content = re.sub(rb"(['\"]?)" + re.escape(commit) + rb"\1", COMMIT_MARK, content)
        files[path.relative_to(root).as_posix()] = (stat.S_IMODE(path.lstat().st_mode), content)
    return files


def _diff(
    preset: str, old: dict[str, tuple[int, bytes]], new: dict[str, tuple[int, bytes]]
) -> list[str]:
    """A unified diff per file that differs in content, mode or presence (/dev/null)."""
    out: list[str] = []
    for rel in sorted(old.keys() | new.keys()):
        if old.get(rel) == new.get(rel):
            continue
        a, b = f"a/{preset}/{rel}", f"b/{preset}/{rel}"
        old_mode, old_text = old.get(rel, (None, b""))
        new_mode, new_text = new.get(rel, (None, b""))
        if old_mode is not None and new_mode is not None and old_mode != new_mode:
            out.append(f"mode {a}: {old_mode:o} -> {new_mode:o}")
        out += difflib.unified_diff(
            old_text.decode(errors="replace").splitlines(),
            new_text.decode(errors="replace").splitlines(),
            a if rel in old else "/dev/null",
            b if rel in new else "/dev/null",
            lineterm="",
        )
    return out


@task(help={"version": "PEP 440 version, e.g. 0.2.0 (tagged as v0.2.0)"})
def release(c: Context, version: str) -> None:
    """Tag a release of the template and package (they share one version)."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise Exit(f"release: '{version}' is not a PEP 440 version (e.g. 0.2.0)", code=2) from None
    tag = f"v{parsed}"
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
    )
    if status.stdout.strip():
        raise Exit("release: commit or stash your changes first; a release is a clean commit")
    existing = subprocess.run(
        ["git", "tag", "--list", "v*"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    newer = [t for t in existing if _is_version(t[1:]) and Version(t[1:]) >= parsed]
    if newer:
        raise Exit(f"release: {tag} must be newer than the existing {max(newer, key=_key)}")
    subprocess.run(["git", "tag", "-a", tag, "-m", f"Shipyard {parsed}"], cwd=REPO, check=True)
    print(f"tagged {tag}; push it (git push origin {tag}) to publish the template and package")


@task(help={"remote": "each action's repository URL, with {repo} for owner/name"})
def action_pins(c: Context, remote: str = "https://github.com/{repo}") -> None:
    """Record which commit each pinned action's tag is, asking the action's own repository.

    Only the repository and tag are read from actions.jinja, never its SHA: the record is the
    independent truth the pins are tested against. Run it after bumping a tag there.
    """
    pins: dict[str, dict[str, str]] = {}
    for action, tag in PINNED_TAG.findall(ACTIONS.read_text()):
        repo = repository(action)
        pins.setdefault(repo, {})[tag] = tag_commit(remote.format(repo=repo), tag)
    ACTION_PINS.write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n")
    print(f"recorded {len(pins)} action tags in {ACTION_PINS.relative_to(REPO)}")


def repository(action: str) -> str:
    """owner/name of an action (github/codeql-action/init lives in github/codeql-action)."""
    return "/".join(action.split("/")[:2])


def tag_commit(url: str, tag: str) -> str:
    """The commit tag `tag` of the repository at `url` points to (an annotated tag peeled)."""
    refs = [f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}"]
    listed = subprocess.run(
        ["git", "ls-remote", "--tags", url, *refs], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        raise Exit(f"action-pins: cannot list the tags of {url}: {listed.stderr.strip()}")
    shas = {ref: sha for sha, ref in (line.split("\t") for line in listed.stdout.splitlines())}
    commit = shas.get(refs[1]) or shas.get(refs[0])
    if commit is None:
        raise Exit(f"action-pins: {url} has no tag {tag}")
    return commit


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _key(tag: str) -> Version:
    return Version(tag[1:])


ns = Collection(render, render_diff, release, action_pins)
