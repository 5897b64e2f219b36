"""The record of point-in-time recovery drills, kept beside the pgBackRest repository.

A drill's recovery time is what the recovery runbook rests on ("a restore takes about as long as
the last drill's"), so it must outlive the drill's console: `pitr drill` writes the outcome to
`shipyard-drill.json` at the repository's `--target` (pgBackRest reads only its `archive/` and
`backup/` folders there) and `pitr list` prints it. The record keeps the last drill, passed or
failed, and the last one that passed: a failure must not hide how long a good restore took.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from shipyard import timepoint
from shipyard.backup.storage import NotFound, Storage

KEY = "shipyard-drill.json"


@dataclass(frozen=True)
class Outcome:
    """One drill: when it ended, and its measurements or the error that stopped it."""

    ended: datetime
    restore_seconds: float | None = None  # the recovery time: restore, replay and check
    recovery_point_age: float | None = None  # seconds; None where commit times are untracked
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        when = timepoint.rfc3339(self.ended)
        if not self.passed:
            return f"{when} FAILED: {self.error}"
        point = (
            "not tracked"
            if self.recovery_point_age is None
            else f"{self.recovery_point_age:.0f} s old"
        )
        return f"{when} passed: restored in {self.restore_seconds:.1f} s, recovery point {point}"


@dataclass(frozen=True)
class Record:
    last: Outcome
    last_passed: Outcome | None

    def describe(self) -> str:
        lines = [f"last drill: {self.last.describe()}"]
        if not self.last.passed:
            passed = self.last_passed.describe() if self.last_passed else "none yet"
            lines.append(f"last passing drill: {passed}")
        return "\n".join(lines)


def read(storage: Storage) -> Record | None:
    """The record, or None when no drill has run or its content is garbled (the next drill
    writes a new one). StorageError when the storage cannot say."""
    try:
        data = json.loads(storage.get_bytes(KEY))
        last_passed = data.get("last_passed")
        return Record(_outcome(data["last"]), _outcome(last_passed) if last_passed else None)
    except (NotFound, ValueError, KeyError, TypeError, AttributeError):
        return None


def write(storage: Storage, outcome: Outcome) -> None:
    """Add `outcome` to the record: it becomes the last drill, and the last passing one if it
    passed."""
    before = read(storage)
    last_passed = outcome if outcome.passed else (before.last_passed if before else None)
    body = {"last": _json(outcome), "last_passed": _json(last_passed) if last_passed else None}
    # Indented: a person reads it too (DEPLOYMENT.md's runbook quotes it).
    storage.put_bytes(KEY, (json.dumps(body, indent=2) + "\n").encode())


def _json(outcome: Outcome) -> dict[str, object]:
    return {**asdict(outcome), "ended": timepoint.rfc3339(outcome.ended)}


def _outcome(data: dict[str, object]) -> Outcome:
    def number(name: str) -> float | None:
        value = data.get(name)
        return float(value) if isinstance(value, int | float) else None

    error = data.get("error")
    return Outcome(
        ended=timepoint.parse(str(data["ended"])),
        restore_seconds=number("restore_seconds"),
        recovery_point_age=number("recovery_point_age"),
        error=str(error) if error is not None else None,
    )
