"""What was pushed and deployed, kept in `.shipyard/` beside shipyard.yaml.

`images.json` holds the digest of each component's last push, so deploys use the digest and
never a moving tag; `deploys-<env>.json` is the history `rollback` steps back through
(`rollback_target`). The folder ignores itself in git, so recording a push never makes the
tree dirty.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shipyard.engines import EngineError

# The backup engine's image (<registry>/<service>-backup): recorded beside the components under
# this name, the Compose service and the chart's `backup` values are named the same.
BACKUP = "backup"

FOLDER = ".shipyard"


def _folder(root: Path) -> Path:
    path = root / FOLDER
    path.mkdir(exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Local records of pushes and deploys; never committed.\n*\n")
    return path


def _read_dict(path: Path) -> dict[str, Any]:
    data = _read(path)
    return data if isinstance(data, dict) else {}


def _read_list(path: Path) -> list[Any]:
    data = _read(path)
    return data if isinstance(data, list) else []


def _read(path: Path) -> object:
    """A record's JSON (None when absent); EngineError naming it when it is not JSON."""
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:  # also UnicodeDecodeError
        raise EngineError(
            f"{path} is not valid JSON ({exc}); fix or delete it (it is a local record)"
        ) from None


def _write(path: Path, data: object) -> None:
    # Write-then-rename: an interrupted task never leaves half a record behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    Path(tmp).replace(path)


def now() -> str:
    """UTC timestamp for records."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def pushed(root: Path) -> dict[str, dict[str, str]]:
    """component -> {repository, tag, digest, ref, revision, pushed_at} of the last push."""
    data: dict[str, dict[str, str]] = _read_dict(root / FOLDER / "images.json")
    return data


def record_push(root: Path, component: str, record: dict[str, str]) -> None:
    """Remember the digest a component's image was pushed with."""
    path = _folder(root) / "images.json"
    data = _read_dict(path)
    data[component] = record
    _write(path, data)


def deploys(root: Path, env: str) -> list[dict[str, Any]]:
    """Deploy history of `env`, oldest first: {images, revision, status, at}."""
    data: list[dict[str, Any]] = _read_list(root / FOLDER / f"deploys-{env}.json")
    return data


def record_deploy(root: Path, env: str, entry: dict[str, Any]) -> None:
    """Append one deploy (or rollback) outcome to `env`'s history."""
    path = _folder(root) / f"deploys-{env}.json"
    data = _read_list(path)
    data.append({**entry, "at": now()})
    _write(path, data)


# Outcomes after which the recorded images were serving and healthy.
HEALTHY = ("deployed", "rolled-back")


def rollback_target(history: list[dict[str, Any]]) -> dict[str, str] | None:
    """The images `rollback` goes to: the newest healthy release before the current one, or
    None when the history holds none.

    A rollback's entry stands where the release it went back to stands, so a second rollback
    goes one release further back (not forward again), and a release that was rolled back
    away from is never returned to.
    """
    healthy = [i for i, entry in enumerate(history) if entry.get("status") in HEALTHY]
    if not healthy:
        return None
    current: dict[str, str] = history[healthy[-1]]["images"]
    position = _origin(history, healthy[-1])
    for entry in reversed(history[:position]):
        if entry.get("status") in HEALTHY and entry["images"] != current:
            images: dict[str, str] = entry["images"]
            return images
    return None


def _origin(history: list[dict[str, Any]], position: int) -> int:
    """Where a rolled-back entry's images were deployed: the newest earlier healthy entry with
    the same images, followed back through earlier rollbacks (its own position otherwise)."""
    while history[position].get("status") == "rolled-back":
        images = history[position]["images"]
        earlier = [
            i
            for i in range(position)
            if history[i].get("status") in HEALTHY and history[i]["images"] == images
        ]
        if not earlier:
            break
        position = earlier[-1]
    return position
