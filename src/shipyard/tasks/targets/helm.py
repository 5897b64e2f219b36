"""Kubernetes namespaces: the service's chart, upgraded atomically with the pushed digests
(Helm rolls a failed upgrade back itself), a backup Job before production migrations, and
rollbacks to the revision `helm_engine.rollback_revision` picks."""

from __future__ import annotations

from datetime import UTC, datetime

from invoke.exceptions import Exit

from shipyard import config
from shipyard.engines import EngineError, cnpg, smoke_job, state
from shipyard.engines import helm as helm_engine
from shipyard.engines.proc import Command
from shipyard.engines.state import BACKUP
from shipyard.tasks import operator
from shipyard.tasks.release import Release
from shipyard.tasks.support import execute, failures, plan, say
from shipyard.tasks.targets import base
from shipyard.tasks.targets.base import Options, ask, preflight, refuse_in_maintenance

# The page maintenance mode serves, shared with the Compose proxy (proxy/maintenance/).
PAGE = "proxy/maintenance/index.html"


def chart_release(cfg: config.Config, env: config.Environment) -> helm_engine.Release:
    """The Helm release of the service in `env`'s namespace: charts/<service>, env's values."""
    return helm_engine.Release(
        name=cfg.service,
        namespace=env.namespace,
        chart=f"charts/{cfg.service}",
        values_file=env.values_file,
        replicas=env.replicas,
        component_replicas=dict(env.component_replicas),
        host=env.host,
        root=cfg.root,
    )


class HelmTarget:
    """An environment in a Kubernetes namespace, reached through the current kubeconfig."""

    def __init__(self, cfg: config.Config, env: config.Environment) -> None:
        self.cfg = cfg
        self.env = env
        self.chart = chart_release(cfg, env)

    def missing_secrets(self) -> tuple[list[str], str]:
        # The pods read an existing Secret: check its keys (never its values).
        with failures("checking the environment's Secret"):
            secret, missing = helm_engine.missing_secret_keys(self.chart)
        return missing, f"Secret {secret} in namespace {self.env.namespace}"

    def running(self) -> dict[str, str]:
        with failures("reading the deployed release"):
            digests = helm_engine.deployed_digests(self.chart)
        return {
            name: f"{self.cfg.image_repository(name)}@{digest}" for name, digest in digests.items()
        }

    def _smoke_job(self) -> smoke_job.SmokeJob | None:
        """The environment's smoke check as a Job of the new image of its component."""
        smoke = self.env.smoke
        if smoke is None:
            return None
        service, env = self.cfg.service, self.env.name
        return smoke_job.SmokeJob(
            release=self.chart.name,
            namespace=self.env.namespace,
            component=base.smoke_component(self.cfg, smoke),
            name=helm_engine.job_name(f"{service}-smoke"),
            argv=smoke.command,
            timeout=smoke.timeout,
            manifest=self.cfg.root / state.FOLDER / f"smoke-job-{env}.json",
        )

    def migrate(self, opts: Options) -> None:
        del opts  # nothing runs: the chart migrates
        say(
            f"{self.env.name}: on Helm the chart's migration Job runs before each upgrade; "
            f"run `invoke deploy --env {self.env.name}`"
        )

    def _backup_before_migrating(self, timeout: int) -> helm_engine.BackupJob | cnpg.BaseBackup:
        """A Job from the chart's backup CronJob; with a CloudNativePG Cluster, a base backup
        by the operator (the chart renders no CronJob then)."""
        service, namespace = self.cfg.service, self.env.namespace
        if operator.by_operator(self.cfg, self.env):
            name = helm_engine.job_name(f"{service}-pre-migrate")
            return cnpg.BaseBackup(cnpg.cluster(service, namespace), name, timeout)
        return helm_engine.backup_job(service, namespace, timeout)

    def deploy(self, release: Release, opts: Options) -> None:
        env = self.env.name
        backup_job: helm_engine.BackupJob | cnpg.BaseBackup | None = None
        wanted = self.env.migrate and self.env.backup_before_migrate
        if wanted and not (opts.skip_migrate or opts.skip_backup):
            backup_job = self._backup_before_migrating(opts.timeout)
        # The chart's backup CronJob runs the backup image pushed with this commit: the chart
        # refuses an image without a digest, so say what to do before anything changes.
        backup = release.backup_image()
        if self.cfg.database is not None and not backup:
            raise Exit(
                f"shipyard: {env}'s backup CronJob runs the backup image, and none was pushed "
                "for this commit: run `invoke build --component backup` and `invoke push "
                "--component backup` (CI's release.yml pushes it), or set BACKUP_IMAGE to its "
                "repo@digest; nothing was changed",
                code=1,
            )
        chart_images = {**release.images, BACKUP: backup} if backup else dict(release.images)
        kept = None if opts.dry_run else self._maintenance_kept(opts)
        upgrade = helm_engine.upgrade(
            self.chart,
            chart_images,
            timeout=opts.timeout,
            migrate=not opts.skip_migrate,
            maintenance=kept,
        )
        if opts.dry_run:
            plan(
                f"deploy {self.cfg.service} to {env} (helm)",
                [
                    f"preflight: clean tree, images in the registry: {release.refs}",
                    *(backup_job.plan() if backup_job else []),
                    upgrade,
                    f"rollout check: every Deployment of release {self.chart.name} in "
                    f"namespace {self.env.namespace} has its new pods available",
                    *self._smoke_plan(),
                ],
            )
            return
        preflight(self, release)
        ask(self.env, f"Deploy {release.refs} to {env}?", opts)
        try:
            with failures(f"deploy to {env}"):
                if backup_job:
                    backup_job.take(say)
                execute(upgrade, "helm upgrade")
                helm_engine.check_rollout(self.chart, opts.timeout)
                self._smoke_check(release, opts.timeout)
        except Exit as exc:
            if exc.code != 130:
                raise
            raise Exit(
                f"shipyard: the deploy to {env} was interrupted (Ctrl-C); Helm may have left "
                f"the release pending: check `invoke status --env {env}`, then `invoke "
                f"rollback --env {env}` if it did",
                code=130,
            ) from None
        state.record_deploy(self.cfg.root, env, {"images": release.images, "status": "deployed"})
        say(f"{env}: deployed and healthy")

    def _smoke_plan(self) -> list[Command | str]:
        job = self._smoke_job()
        if job is None:
            return []
        revision = "the revision `invoke rollback` would pick"
        return [
            *job.plan(),
            f"a failing smoke check rolls back like a failed health check: `helm rollback` to "
            f"{revision}",
        ]

    def _smoke_check(self, release: Release, timeout: int) -> None:
        """Run the smoke check of the upgraded release; failing, `helm rollback` to the
        revision that served before, and RolledBack saying why."""
        job = self._smoke_job()
        if job is None:
            return
        try:
            failure = smoke_job.run_check(job, say)
        except EngineError as exc:
            # A check that could not be run or read did not pass: the upgraded release is not
            # kept on trust.
            failure = smoke_job.Failure(f"no exit code ({exc})", "")
        if failure is None:
            say(f"{self.env.name}: the smoke check passed")
            return
        env, reason = self.env.name, base.smoke_failure(job.argv, failure.code, failure.output)
        state.record_deploy(self.cfg.root, env, {"images": release.images, "status": "failed"})
        revision = helm_engine.rollback_revision(helm_engine.revisions(self.chart))
        if revision is None:
            raise Exit(
                f"shipyard: the deploy to {env} failed ({reason}). There was no previous "
                f"revision to roll back to; see `kubectl logs --namespace {job.namespace} "
                f"job/{job.name}`",
                code=1,
            )
        say(f"the smoke check failed; rolling back to revision {revision}")
        try:
            execute(helm_engine.rollback(self.chart, timeout, revision), "helm rollback")
        except EngineError as again:
            raise Exit(
                f"shipyard: the deploy to {env} failed ({reason}) and so did the rollback "
                f"({again}); see `invoke status --env {env}`",
                code=1,
            ) from None
        raise base.RolledBack(
            f"shipyard: the deploy to {env} failed ({reason}); rolled back to revision "
            f"{revision}, the previous version is serving",
            code=1,
        )

    def _maintenance_kept(self, opts: Options) -> helm_engine.Maintenance | None:
        """Maintenance mode of the deployed release, kept on by a deploy made during it (with
        the repository's page); a deploy without --during-maintenance is refused then."""
        with failures("reading maintenance mode"):
            kept = helm_engine.deployed_maintenance(self.chart)
        refuse_in_maintenance(self.env, kept.since if kept else "", opts)
        if kept is None:
            return None
        page = PAGE if (self.cfg.root / PAGE).is_file() else ""
        return helm_engine.Maintenance(kept.retry_after, kept.since, page)

    def rollback(self, opts: Options) -> None:
        """`helm rollback` to the revision `helm_engine.rollback_revision` picks from the
        history (read even in a dry run: the plan names the revision)."""
        env = self.env.name
        revision = helm_engine.rollback_revision(helm_engine.revisions(self.chart))
        if revision is None:
            raise Exit(
                f"shipyard: {env} has no healthy revision before the current one in the Helm "
                f"history of release {self.chart.name} to roll back to; nothing was changed",
                code=1,
            )
        cmd = helm_engine.rollback(self.chart, opts.timeout, revision)
        if opts.dry_run:
            plan(
                f"rollback {self.cfg.service} on {env} (helm) to revision {revision}",
                [helm_engine.history(self.chart), cmd],
            )
            return
        ask(self.env, f"Roll {env} back to Helm revision {revision}?", opts)
        execute(cmd, "helm rollback")
        say(f"{env}: rolled back to revision {revision}")

    def maintenance(self, on: bool, retry_after: int, opts: Options) -> None:
        """The chart's maintenance mode switched on the deployed release (every value it was
        deployed with kept), with the repository's page when there is one."""
        env = self.env.name
        if not any(c.kind == "http" for c in self.cfg.components):
            raise Exit(
                f"shipyard: {self.cfg.service} runs workers only: no request reaches it to be "
                "answered with the maintenance page. Nothing was changed",
                code=1,
            )
        switched = None
        if on:
            since = datetime.now(UTC).isoformat(timespec="seconds")
            page = PAGE if (self.cfg.root / PAGE).is_file() else ""
            switched = helm_engine.Maintenance(retry_after, since, page)
        cmd = helm_engine.switch_maintenance(self.chart, switched, opts.timeout)
        if opts.dry_run:
            plan(f"maintenance {'on' if on else 'off'} for {self.cfg.service} on {env}", [cmd])
            return
        if on:
            ask(self.env, f"Answer every request to {env} with the maintenance page?", opts)
        with failures(f"maintenance {'on' if on else 'off'} for {env}"):
            execute(cmd, "helm upgrade")
        if on:
            say(f"{env}: in maintenance: the Ingress/HTTPRoute send every request to the 503 page")
        else:
            say(f"{env}: maintenance off: the service answers again")

    def status(self) -> None:
        for cmd in helm_engine.status(self.chart):
            execute(cmd, "helm status")
        with failures("reading maintenance mode"):
            kept = helm_engine.deployed_maintenance(self.chart)
        if kept:
            say(f"{self.env.name}: in maintenance mode since {kept.since}")

    def logs(self, component: str, tail: int, follow: bool) -> None:
        execute(helm_engine.logs(self.chart, component, tail, follow), "reading logs")
