"""What one release is made of: the environment, the commit (read once) and the image of each
component by digest, resolved once per task and handed to the environment's target."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from invoke.exceptions import Exit

from shipyard.config import Config, Environment
from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.engines import git, state
from shipyard.engines.state import BACKUP
from shipyard.tasks.support import failures, revision


@dataclass(frozen=True)
class Release:
    """The images of one commit, going to one environment."""

    config: Config
    env: Environment
    revision: git.Revision
    images: dict[str, str]  # component -> repo@sha256:...

    @property
    def refs(self) -> str:
        """The images as a user reads them in plans and questions."""
        return ", ".join(self.images.values())

    def backup_image(self) -> str:
        """The backup image pushed for this commit (`invoke build/push --component backup`),
        `BACKUP_IMAGE` when set, else '' (which the Helm target refuses: the chart pins the
        backup image by digest). Compose hosts use `last_backup_image`."""
        given = os.environ.get(compose_engine.image_var(BACKUP), "")
        record = state.pushed(self.config.root).get(BACKUP, {})
        if given or record.get("revision") != self.revision.sha:
            return given
        return record.get("ref", "")


def last_backup_image(root: Path) -> str:
    """`BACKUP_IMAGE` when set, else the last backup image pushed from `root` (any commit's:
    the engine reads every backup format it wrote), else ''."""
    given = os.environ.get(compose_engine.image_var(BACKUP), "")
    return given or state.pushed(root).get(BACKUP, {}).get("ref", "")


def resolve(cfg: Config, env: Environment) -> Release:
    """The release of HEAD to `env`: component -> repo@digest, from (first match wins):

    1. `<COMPONENT>_IMAGE` in the environment (CI passes the digests release.yml pushed);
    2. the digest `invoke push` recorded for this commit in .shipyard/images.json;
    3. the registry: this commit's tag resolved to its digest.
    """
    records = state.pushed(cfg.root)
    rev = revision(cfg.root, env.name)
    images: dict[str, str] = {}
    lookups: dict[str, str] = {}
    for comp in cfg.components:
        var = compose_engine.image_var(comp.name)
        given = os.environ.get(var, "")
        record = records.get(comp.name, {})
        if given:
            if "@sha256:" not in given:
                raise Exit(
                    f"shipyard: {var}={given} is not a digest reference (repo@sha256:...): "
                    "deploys never use a moving tag",
                    code=2,
                )
            images[comp.name] = given
        elif record.get("ref") and record.get("revision") == rev.sha:
            images[comp.name] = record["ref"]
        else:
            lookups[comp.name] = f"{cfg.image_repository(comp.name)}:{rev.image_tag}"
    if lookups:
        with (
            failures("looking up this commit's images"),
            contextlib.closing(docker_engine.client()) as client,
        ):
            for name, ref in lookups.items():
                digest = docker_engine.registry_digest(client, ref)
                if digest is None:
                    raise Exit(
                        f"shipyard: no image for this commit: {ref} is not in the registry; "
                        f"run `invoke build --env {env.name} && invoke push --env {env.name}` "
                        "first",
                        code=1,
                    )
                images[name] = f"{ref.rsplit(':', 1)[0]}@{digest}"
    return Release(cfg, env, rev, images)
