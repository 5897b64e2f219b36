"""`invoke backup`, `backup.list` and `restore --at` where CloudNativePG backs up.

A Helm environment whose PostgreSQL is the chart's CloudNativePG Cluster (shipyard.yaml's
`database.on_kubernetes: cloudnativepg`) has no dumps to list or restore: the operator archives
WAL and takes base backups to the object store. These tasks ask it (engines/cnpg.py): a base
backup now (and, for the components' data paths, which it does not back up, a Job of the
chart's files-only backup CronJob), the backups and the recoverable window, and a
point-in-time recovery into a new Cluster beside the running one, which is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from invoke.exceptions import Exit

from shipyard import config, timepoint
from shipyard.backup import kinds
from shipyard.engines import EngineError, cnpg, kubectl
from shipyard.engines import helm as helm_engine
from shipyard.engines.proc import Command, command
from shipyard.tasks.support import confirm, execute, failures, plan, say


def by_operator(cfg: config.Config, environment: config.Environment) -> bool:
    """The environment's PostgreSQL is backed up and recovered by CloudNativePG."""
    return environment.is_helm and cfg.database is not None and cfg.database.by_operator


def _cluster(cfg: config.Config, environment: config.Environment) -> cnpg.Cluster:
    return cnpg.cluster(cfg.service, environment.namespace)


def _live(target: cnpg.Cluster, env: str) -> dict[str, Any]:
    found = cnpg.live(target)
    if found is None:
        raise EngineError(
            f"there is no Cluster {target.name} in namespace {target.namespace}: deploy {env} "
            "first (`invoke deploy`), or check the kubectl context"
        )
    return found


def backup(
    cfg: config.Config, environment: config.Environment, dry_run: bool, timeout: int
) -> None:
    """A base backup of the environment's Cluster now, waited for; then, when components keep
    files (data paths), which the operator does not back up, a Job of the chart's files-only
    backup CronJob, waited for too."""
    env = environment.name
    target = _cluster(cfg, environment)
    job = cnpg.BaseBackup(target, helm_engine.job_name(f"{cfg.service}-manual"), timeout)
    files = _files_job(cfg, environment, timeout) if keeps_files(cfg) else None
    if dry_run:
        steps = job.plan() + (files.plan() if files else [])
        what = " and the data paths (the files-only backup CronJob)" if files else ""
        plan(f"base backup of {env} (by CloudNativePG){what}", steps)
        return
    with failures(f"the base backup of {env}"):
        if not job.take(say):
            raise EngineError(f"nothing was backed up: deploy {env} first")
    print(f"{env}: base backup {job.name} of Cluster {target.name} completed")
    if files:
        with failures(f"the files backup of {env}"):
            _take_files(files, say)
        print(f"{env}: files backup {files.name} of {', '.join(_data_paths(cfg))} completed")


# The folder of the backup target where the chart's files-only CronJob writes, beside the
# operator's (templates/backup-cronjob.yaml names it too; test_cnpg_files checks both agree).
FILES_FOLDER = "files"


def keeps_files(cfg: config.Config) -> bool:
    """Components keep files in data paths, which the operator does not back up: the chart's
    backup CronJob then does, files only."""
    return bool(_data_paths(cfg))


def _data_paths(cfg: config.Config) -> list[str]:
    return [f"{comp.name}:{path}" for comp in cfg.components for path in comp.data_paths]


def _files_job(
    cfg: config.Config, environment: config.Environment, timeout: int
) -> helm_engine.BackupJob:
    """A Job of the chart's backup CronJob, which with CloudNativePG archives the data paths
    alone (`shipyard backup run --files-only`, templates/backup-cronjob.yaml). Its kind is
    manual, as the base backup's: a person asked for it, and retention keeps it the whole
    daily window, where a second scheduled one of the day would prune it (kinds.py)."""
    return helm_engine.BackupJob(
        f"{cfg.service}-backup",
        helm_engine.job_name(f"{cfg.service}-files"),
        environment.namespace,
        timeout,
        {kinds.KIND_VARIABLE: kinds.MANUAL},
    )


def _take_files(job: helm_engine.BackupJob, say: Callable[[str], None]) -> None:
    """Run the files backup Job and wait for it; EngineError when there is no CronJob (the
    release predates files-only backups, or backups are off), or the Job failed or ran out."""
    if not helm_engine.run_job(job, say, "the files backup Job"):
        raise EngineError(
            f"there is no CronJob {job.cronjob} in namespace {job.namespace} to archive the data "
            "paths: turn backup.enabled on and deploy with this version of the chart "
            "(`invoke deploy`); the base backup is done"
        )


def list_backups(cfg: config.Config, environment: config.Environment) -> None:
    """The operator's Backup objects and the window `restore --at` can reach."""
    env = environment.name
    target = _cluster(cfg, environment)
    with failures(f"listing the backups of {env}"):
        found = _live(target, env)
        execute(
            command("kubectl", "get", cnpg.BACKUP, "--namespace", target.namespace),
            "listing the Backups",
        )
    print(f"{env}: recoverable window of Cluster {target.name}: {cnpg.window(found).describe()}")


def recover(
    cfg: config.Config,
    environment: config.Environment,
    at: str,
    yes: bool,
    dry_run: bool,
    timeout: int,
) -> None:
    """`restore --at`: a new Cluster recovered from the running one's backups and WAL."""
    env = environment.name
    target = _cluster(cfg, environment)
    with failures(f"the recovery of {env}"):
        found = _live(target, env)
        point = cnpg.recovery_point(at, cnpg.window(found))
        name = cnpg.recovered_name(target)
        manifest = cnpg.recovery_manifest(found, name, point)
    to = timepoint.rfc3339(point) if point else "the last archived WAL"
    steps: list[Command | str] = [
        f"{target.lookup()}  (its image, storage, object store and recoverable window)",
        f"kubectl create --namespace {target.namespace} --filename <the Cluster below>",
        cnpg.ready(target.namespace, name, timeout),
    ]
    if dry_run:
        plan(f"recover {env}'s PostgreSQL to {to} into a new Cluster {name}", steps)
        print(yaml.safe_dump(manifest, sort_keys=False))
        return
    if environment.confirm:
        confirm(f"Create Cluster {name} in {target.namespace}, recovered to {to}?", yes)
    with failures(f"the recovery of {env}"):
        kubectl.creating(manifest, f"creating the Cluster {name}", say)
        execute(cnpg.ready(target.namespace, name, timeout), f"waiting for the Cluster {name}")
    database = cfg.database.name if cfg.database else ""
    print(
        f"{env}: Cluster {name} holds {target.name}'s data as of {to}; {target.name} is "
        f"untouched. Its credentials are in Secret {name}-app. Check it (`kubectl exec -it "
        f"{name}-1 --namespace {target.namespace} -- psql {database}`), "
        "bring back what was lost (DEPLOYMENT.md, Point-in-time recovery), then delete it: "
        f"`kubectl delete {cnpg.CLUSTER} {name} --namespace {target.namespace}`"
    )


def refuse(cfg: config.Config, environment: config.Environment, what: str) -> Exit:
    """What the kit's dump engine cannot do where the operator backs up."""
    target = _cluster(cfg, environment)
    return Exit(
        f"shipyard: {environment.name}'s PostgreSQL is the CloudNativePG Cluster {target.name}, "
        f"which the operator backs up: {what} applies to the kit's dumps. Use `invoke backup "
        f"--env {environment.name}` (a base backup), `invoke backup.list --env "
        f"{environment.name}` and `invoke restore --env {environment.name} --at TIME|latest`",
        code=2,
    )
