"""What every check returns: `Finding`, one problem one tool found, and how its message reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Finding:
    """One problem one tool found: where, which rule, and what is wrong."""

    file: str
    line: int | None
    tool: str
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: [{self.tool} {self.rule}] {self.message}"


def oneline(text: str) -> str:
    """A tool's multi-line output as one finding message."""
    return " ".join(text.split())
