"""Thin typed wrappers around the real tools the tasks drive (git, docker, compose, helm).

Engines know nothing about Invoke: they build exact command lines, run them, and raise
`EngineError` with a sentence a user can act on. Tasks turn that into `Exit`.
"""

from __future__ import annotations


class EngineError(Exception):
    """A tool failed or is unavailable; the message says what happened and what to do."""
