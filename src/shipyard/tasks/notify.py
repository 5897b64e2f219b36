"""Deploy notifications: `invoke deploy` posts what happens to a chat channel's incoming webhook.

The webhook's URL is a secret (whoever holds it can post to the channel), so it is read from
the environment only, never from a file or the command line, and never printed: a failed
notification says what went wrong without it. Notifications never change a deploy's result:
one that cannot be delivered is a warning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import requests

# The environment variable holding the webhook's URL (a Slack-compatible incoming webhook:
# Slack, Mattermost, Rocket.Chat, Discord's /slack endpoint, Teams workflows).
WEBHOOK_ENV = "SHIPYARD_DEPLOY_WEBHOOK_URL"
# Seconds a notification may take: a slow chat service never holds a deploy up for long.
TIMEOUT = 5.0

Event = Literal["started", "succeeded", "rolled back", "failed"]


@dataclass(frozen=True)
class Deploy:
    """One deploy as its notifications describe it: the images running before and those it
    rolls out, by component."""

    service: str
    environment: str
    old: Mapping[str, str]
    new: Mapping[str, str]


def _versions(images: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {ref}" for name, ref in sorted(images.items())) or "nothing"


def text(deploy: Deploy, event: Event, reason: str = "") -> str:
    """The message of one event: service, environment, old and new images (repo@digest)."""
    where = f"{deploy.service} on {deploy.environment}"
    old, new = _versions(deploy.old), _versions(deploy.new)
    if event == "started":
        return f"Deploy of {where} started: {old} -> {new}"
    if event == "succeeded":
        return f"Deploy of {where} succeeded: now serving {new} (was {old})"
    if event == "rolled back":
        return f"Deploy of {where} rolled back: {old} serving again, {new} not kept. {reason}"
    return f"Deploy of {where} failed: {reason} (was {old}, deploying {new})"


def url() -> str:
    """The webhook's URL, or '' when none is set (no notifications)."""
    return os.environ.get(WEBHOOK_ENV, "").strip()


def send(deploy: Deploy, event: Event, reason: str = "") -> None:
    """Post one event as Slack's `{"text": ...}` when a webhook is set; a failure is a warning
    on stderr that names neither the URL nor anything of it."""
    where = url()
    if not where:
        return
    try:
        answer = requests.post(where, json={"text": text(deploy, event, reason)}, timeout=TIMEOUT)
        problem = "" if answer.ok else f"the webhook answered HTTP {answer.status_code}"
    except requests.RequestException as exc:
        # The exception's own message quotes the URL: only its kind is said.
        problem = f"{type(exc).__name__} reaching the webhook"
    if problem:
        print(
            f"shipyard: warning: the deploy notification ({event}) was not delivered: {problem} "
            f"(the URL in {WEBHOOK_ENV} is not shown); the deploy goes on",
            file=sys.stderr,
            flush=True,
        )
