"""The generated repo's backup pieces: backup/Dockerfile passes hadolint, and the `backup`
service of compose.backup.yaml passes `docker compose config` and runs the engine's contract
command, for every preset with a database (and for local storage); none of it exists without
a database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from shipyard import validate
from tests.conftest import PRESETS, Render, load_preset

WITH_DATABASE = [p for p in PRESETS if load_preset(p).get("database", "postgres") == "postgres"]


def backup_service(repo: Path) -> dict[str, Any]:
    compose = YAML(typ="safe").load((repo / "compose.backup.yaml").read_text())
    service: dict[str, Any] = compose["services"]["backup"]
    return service


@pytest.mark.parametrize("preset", WITH_DATABASE)
def test_backup_image_and_service_pass_their_tools(
    preset: str, rendered: Callable[[str], Path]
) -> None:
    repo = rendered(preset)
    # What copier recorded: the preset's answers and the defaults of those it leaves out.
    answers = YAML(typ="safe").load((repo / ".copier-answers.yml").read_text())
    assert validate.validate(repo, only=["dockerfile", "compose"]) == []
    dockerfile = (repo / "backup" / "Dockerfile").read_text()
    assert f"ARG POSTGRES_VERSION={answers.get('postgres_version', 17)}" in dockerfile
    assert "USER 1000:1000" in dockerfile
    service = backup_service(repo)
    # Its own file: a backup never needs the app's image variables.
    assert (
        "backup" not in YAML(typ="safe").load((repo / "compose.prod.yaml").read_text())["services"]
    )
    assert service["image"].startswith("${BACKUP_IMAGE:?")
    assert service["command"][:4] == ["shipyard", "backup", "run", "--target"]
    bucket = answers.get("backup_s3_bucket")
    if answers.get("backup_storage") == "s3" and bucket:
        assert service["command"][4].startswith(f"s3://{bucket}/")
    # Then each component's data paths, whose files it archives with the database.
    data = [
        arg
        for c in answers.get("components", [])
        for path in c.get("data_paths", [])
        for arg in ("--data-path", f"{c['name']}:{path}")
    ]
    assert service["command"][5:] == [
        "--retention-days",
        str(answers["backup_retention_days"]),
        *data,
    ]
    # Secrets are references to the host's environment, never values.
    assert service["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    # Restores stage the whole dump in TMPDIR: a disk volume the image's uid 1000 owns, never
    # the tmpfs (memory) on /tmp.
    assert service["environment"]["TMPDIR"] == "/scratch"
    assert "scratch:/scratch" in service["volumes"]
    assert "/scratch" not in service["tmpfs"]
    assert "mkdir -p /backups /scratch" in dockerfile
    assert "chown 1000:1000 /backups /scratch" in dockerfile


def test_local_storage_mounts_the_folder_shipyard_yaml_names(
    render: Render, tmp_path: Path
) -> None:
    answers = {**load_preset("minimal"), "database": "postgres", "migrations": "none"}
    repo = render({**answers, "backup_storage": "local"}, tmp_path / "repo")
    assert validate.validate(repo, only=["dockerfile", "compose"]) == []
    service = backup_service(repo)
    assert service["command"][4] == "file:///backups"
    assert service["volumes"] == ["./backups/${SHIPYARD_ENV:-prod}:/backups", "scratch:/scratch"]
    shipyard_yaml = YAML(typ="safe").load((repo / "shipyard.yaml").read_text())
    assert shipyard_yaml["environments"]["prod"]["backup"]["path"] == "backups/prod"


def test_no_database_no_backup(rendered: Callable[[str], Path]) -> None:
    repo = rendered("minimal")
    assert not (repo / "backup").exists()
    assert not (repo / "compose.backup.yaml").exists()
