"""The `shipyard` command: scaffolds a kit (`shipyard new`) and checks one (`shipyard validate`)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from shipyard import __version__, validate


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 clean, 1 findings, 2 usage/tools)."""
    parser = argparse.ArgumentParser(prog="shipyard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shipyard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check every artifact with its real tool")
    check.add_argument(
        "roots", nargs="*", default=[Path()], type=Path, help="kit folder(s) (default .)"
    )
    check.add_argument(
        "--only",
        action="append",
        choices=sorted(validate.CHECKS),
        help="run only this check (repeatable)",
    )
    check.add_argument(
        "--group",
        action="append",
        choices=sorted(validate.GROUPS),
        help="run only this group of checks: lint (linters) or schema (each file's consumer)",
    )
    check.add_argument(
        "--format",
        choices=["text", "github"],
        default="text",
        help="github: the report plus GitHub Actions annotations on each finding's file",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    # The backup engine imports boto3 and psycopg (~0.7 s); `validate` runs often and needs
    # neither, so the backup command is only loaded for other command lines (and --help).
    # `new` imports copier only when it runs.
    if argv[:1] != ["validate"]:
        from shipyard import new

        new.register(commands)
    if argv[:1] not in (["validate"], ["new"]):
        from shipyard.backup import cli as backup_cli

        backup_cli.register(commands)
    args = parser.parse_args(argv)
    if args.command == "backup":
        # Kubernetes (a Job past its deadline, a drained node) and `docker stop` end a job with
        # SIGTERM, a closed terminal with SIGHUP: the same clean stop as Ctrl-C (an upload
        # aborted, a partial file removed, pgBackRest stopped), where Python would die on the
        # spot. SIGINT too, which Python leaves ignored when the process started with it
        # ignored (a non-interactive shell's `&`): a scheduler's stop would do nothing. `backup
        # schedule` sets its own.
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, _interrupt) for s in stops}
        try:
            return backup_cli.run(args)
        except KeyboardInterrupt:  # Ctrl-C, or the backup scheduler stopping: cleaned up
            print(
                "shipyard backup: interrupted (nothing it was writing is listed)", file=sys.stderr
            )
            return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if args.command == "new":
        return new.run(args)

    only: list[str] | None = None
    if args.only or args.group:
        only = [*(args.only or []), *(n for g in args.group or [] for n in validate.GROUPS[g])]
    for root in args.roots:
        if not root.is_dir():
            print(f"shipyard: {root} is not a folder", file=sys.stderr)
            return 2
    try:
        findings = []
        for root in args.roots:
            found = validate.validate(root, only)
            # Several kits make one report: each finding names its kit too.
            if len(args.roots) > 1:
                found = [dataclasses.replace(f, file=str(root / f.file)) for f in found]
            findings += found
    except validate.ToolMissingError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return 2
    print(validate.report(findings))
    if args.format == "github" and findings:
        print(validate.github_annotations(findings))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
