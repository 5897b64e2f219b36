"""Where images get their tags: the git revision of the working tree."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shipyard.engines import EngineError
from shipyard.engines.proc import capture, command

# Release tags become image tags as they are; anything else tags by commit.
RELEASE_TAG = re.compile(r"^v\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Revision:
    """The commit being built and how it maps to an image tag."""

    sha: str
    short: str
    tag: str | None
    dirty: bool
    created: str
    source: str

    @property
    def image_tag(self) -> str:
        """`vX.Y.Z` on a release tag, else the short sha; `-dirty` with uncommitted changes."""
        base = self.tag or self.short
        return f"{base}-dirty" if self.dirty else base


def _git(root: Path, *args: str) -> str:
    proc = capture(command("git", *args, cwd=root), what="tagging images by git revision")
    if proc.returncode:
        raise EngineError(f"git {' '.join(args)} failed in {root}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def revision(root: Path) -> Revision:
    """Describe HEAD of the repository at `root`; EngineError outside a repo or before a commit."""
    try:
        sha = _git(root, "rev-parse", "--verify", "HEAD")
    except EngineError:
        raise EngineError(
            f"{root.resolve()} has no git commit yet: images are tagged from git, so commit "
            "your code first (git init && git add -A && git commit)"
        ) from None
    tags = [t for t in _git(root, "tag", "--points-at", "HEAD").split() if RELEASE_TAG.match(t)]
    status = _git(root, "status", "--porcelain")
    remote = ""
    try:
        remote = _git(root, "remote", "get-url", "origin")
    except EngineError:
        remote = ""
    return Revision(
        sha=sha,
        short=sha[:12],
        tag=max(tags, key=lambda t: tuple(int(n) for n in t[1:].split("."))) if tags else None,
        dirty=bool(status),
        # The commit time, not the build time, so rebuilding a commit gives the same labels.
        created=_git(root, "show", "-s", "--format=%cI", "HEAD"),
        source=remote or root.resolve().as_uri(),
    )
