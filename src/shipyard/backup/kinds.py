"""The manifest's kinds, in a module of their own: the deploy tasks name one without loading
the engine (psycopg, boto3), which every `invoke` command would then wait for."""

from __future__ import annotations

# The manifest's kinds, why a backup was taken: by the schedule (the cron's), by a person
# (`invoke backup`), by a deploy before it migrates the database, and by a restore, of what it
# replaces. schemas/backup-manifest.schema.json lists the same.
SCHEDULED, MANUAL, PRE_MIGRATE, SAFETY = "scheduled", "manual", "pre-migrate", "safety"
KINDS = (SCHEDULED, MANUAL, PRE_MIGRATE, SAFETY)
# The variable `backup run` takes its kind from when --kind is not given. The deploy tasks set
# it, not --kind: the engine that runs their backup may be a previous release's (the last
# backup image pushed, the CronJob being replaced), which refuses a kind it does not know but
# ignores a variable, and then takes a scheduled backup as before.
KIND_VARIABLE = "SHIPYARD_BACKUP_KIND"
