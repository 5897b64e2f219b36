"""This repository's own tasks: `invoke --list`.

invoke render            render every preset into build/presets (what tests check)
invoke release 0.2.0     tag a release; generated repos pin the package at that tag
invoke action-pins       record the commit of each pinned action's tag (needs the network)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

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
    from copier import run_copy
    from ruamel.yaml import YAML

    names = preset or sorted(p.stem for p in PRESETS.glob("*.yml"))
    for name in names:
        answers_file = PRESETS / f"{name}.yml"
        if not answers_file.is_file():
            raise Exit(f"render: no preset {name} in {PRESETS}", code=2)
        dst = REPO / out / name
        shutil.rmtree(dst, ignore_errors=True)  # a file the template dropped must not linger
        answers = YAML(typ="safe").load(answers_file.read_text())
        # vcs_ref HEAD renders uncommitted template edits too.
        run_copy(
            str(REPO), dst, data=answers, defaults=True, unsafe=True, quiet=True, vcs_ref="HEAD"
        )
        print(f"rendered {name} -> {dst.relative_to(REPO)}")


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
    pins = {
        repo: {tag: tag_commit(remote.format(repo=repo), tag)}
        for repo, tag in PINNED_TAG.findall(ACTIONS.read_text())
    }
    ACTION_PINS.write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n")
    print(f"recorded {len(pins)} action tags in {ACTION_PINS.relative_to(REPO)}")


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


ns = Collection(render, release, action_pins)
