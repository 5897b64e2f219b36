"""Compose hosts: `docker compose` with the pushed digests; each http component switched at the
proxy once its new containers are healthy (tasks.targets.switch), workers replaced after, and
what ran before put back when a rollout fails (or Ctrl-C arrives).

Longer than most modules on purpose: the whole Compose release (plan, rollout, revert,
rollback, maintenance, status) reads top to bottom in one class; the switch, the proxy and
the files services read are modules of their own."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import NamedTuple, NoReturn

from invoke.exceptions import Exit

from shipyard import config
from shipyard.backup import kinds
from shipyard.engines import EngineError, state
from shipyard.engines import compose as compose_engine
from shipyard.engines import docker as docker_engine
from shipyard.engines.proc import Command, capture
from shipyard.engines.state import BACKUP
from shipyard.tasks import pitr
from shipyard.tasks.release import Release, last_backup_image, resolve
from shipyard.tasks.support import RELEASE_ENVS, execute, failures, plan, say
from shipyard.tasks.targets import files, proxy, scheduler, switch
from shipyard.tasks.targets.base import (
    Options,
    RolledBack,
    ask,
    preflight,
    refuse_in_maintenance,
    smoke_component,
    smoke_failure,
)


class Step(NamedTuple):
    """A command the migration runs, and what it is called when it fails."""

    cmd: Command
    what: str


class ComposeTarget:
    """An environment on one Docker host, driven through DOCKER_HOST like every Compose task."""

    def __init__(self, cfg: config.Config, env: config.Environment) -> None:
        self.cfg = cfg
        self.env = env

    def missing_secrets(self) -> tuple[list[str], str]:
        """Secrets shipyard.yaml lists that neither the environment nor a local .env provides."""
        provided = set(os.environ)
        dotenv = self.cfg.root / ".env"
        if dotenv.exists():
            for line in dotenv.read_text("utf-8").splitlines():
                name, sep, _ = line.partition("=")
                if sep and not line.lstrip().startswith("#"):
                    provided.add(name.strip().removeprefix("export "))
        missing = [name for name in self.cfg.secrets if name not in provided]
        return missing, "the environment (or the host's .env)"

    def _backup_steps(self, release: Release, opts: Options) -> list[Step]:
        """The backup taken before a production migration, by the last backup image pushed (a
        release of code alone pushes none, and any engine reads the backups an older one
        wrote). None on a first deploy: nothing to back up, and the backup service could not
        join a stack that does not exist yet. A database stopped with its data kept (`docker
        compose down`) is started first, for the same reason."""
        if not self.env.backup_before_migrate:
            return []
        env, file = self.env.name, compose_engine.BACKUP_FILE
        path = self.cfg.root / file
        if not path.is_file() or BACKUP not in compose_engine.services(path):
            raise Exit(
                f"shipyard: {env} takes a backup before migrating, but {file} is "
                "missing or has no `backup` service; add it (see the backup docs) or pass "
                "--skip-backup",
                code=1,
            )
        # None pushed: '' leaves BACKUP_IMAGE to the host's .env, or Compose's own message. The
        # kind goes in a variable: that image's engine may predate the kind (kinds.py).
        backup = compose_engine.backup(
            self.cfg.root,
            env,
            last_backup_image(self.cfg.root),
            container_env={kinds.KIND_VARIABLE: kinds.PRE_MIGRATE},
        )
        take = Step(backup, "the backup before migrating")
        if opts.dry_run:
            return [take]
        database = self._database()
        if database == "none":
            say(
                f"{env}: project {self._project()} has no database yet (a first deploy): "
                "nothing to back up, so no backup before migrating"
            )
            return []
        if database == "stopped":
            start = compose_engine.up(
                self.cfg.root,
                self.env.compose_file,
                release.images,
                opts.timeout,
                services=[pitr.SERVICE],
                env=self._variables(),
            )
            return [Step(start, "starting the database for the backup"), take]
        return [take]

    def _mark_environment(self) -> None:
        """Note in the proxy which environment this stack is, for the next deploy's check."""
        try:
            with contextlib.closing(docker_engine.client()) as client:
                proxy.mark(client, self._project(), self.env.name)
        except EngineError as exc:
            say(f"warning: {exc} (the release is deployed and serving)")

    def _database(self) -> str:
        """The stack's PostgreSQL: "running"; "stopped" (its container or a volume of the stack
        left, as `docker compose down` leaves them: the data is there); "none" (a first
        deploy). A Compose file without the service (the database elsewhere) counts as
        running."""
        if pitr.SERVICE not in compose_engine.services(self.cfg.root / self.env.compose_file):
            return "running"
        project = self._project()
        with contextlib.closing(docker_engine.client()) as client:
            if docker_engine.replicas(client, project, pitr.SERVICE):
                return "running"
            with docker_engine.sdk_errors("listing the stack's volumes"):
                label = f"com.docker.compose.project={project}"
                kept = client.volumes.list(filters={"label": label})
            if kept or docker_engine.replicas(client, project, pitr.SERVICE, every=True):
                return "stopped"
        return "none"

    def _refuse_another_environment(self) -> None:
        """A Docker daemon holds one stack per project name, and every environment's stack is
        the same project: refuse to deploy onto a stack another environment's deploy left
        (each deploy marks its proxy), which this one would take over, database and volumes
        included."""
        project = self._project()
        with (
            contextlib.closing(docker_engine.client()) as client,
            failures("looking at the stack's proxy"),
        ):
            deployed = proxy.environment(client, project)
        if deployed and deployed != self.env.name:
            raise Exit(
                f"shipyard: this Docker host runs {deployed} (project {project}, last deployed "
                f"to {deployed}); deploying {self.env.name} here would take that stack over, "
                f"database and volumes included. Point DOCKER_HOST at {self.env.name}'s own "
                "Docker host; nothing was changed",
                code=2,
            )

    def _migration_steps(self, release: Release, opts: Options) -> list[Step]:
        if not self.env.migrate:
            return []
        backup = [] if opts.skip_backup else self._backup_steps(release, opts)
        migrate = compose_engine.migrate(self.cfg.root, self.env.compose_file, release.images)
        return [*backup, Step(migrate, "the migration")]

    def migrate(self, opts: Options) -> None:
        release = resolve(self.cfg, self.env)
        if not opts.dry_run:
            self._refuse_another_environment()
        steps = self._migration_steps(release, opts)
        if opts.dry_run:
            plan(f"migrate {self.cfg.service} on {self.env.name}", [s.cmd for s in steps])
            return
        ask(self.env, f"Apply migrations to {self.env.name}?", opts)
        _run_migrations(steps)
        say(f"{self.env.name}: migrations applied")

    def deploy(self, release: Release, opts: Options) -> None:
        env = self.env.name
        self._refuse_without_proxy()
        self._copies()  # a missing file is refused before anything changes
        self._refuse_unscalable(release.images)
        if not opts.dry_run:
            self._refuse_another_environment()
        migrations = [] if opts.skip_migrate else self._migration_steps(release, opts)
        schedule = scheduler.start(self.cfg, self.env)
        if opts.dry_run:
            tree = "clean tree" if env in RELEASE_ENVS else "clean tree (not needed on dev)"
            plan(
                f"deploy {self.cfg.service} to {env} (compose)",
                [
                    f"preflight: {tree}, "
                    f"secrets {', '.join(self.cfg.secrets) or '(none)'} set, "
                    f"images in the registry: {release.refs}",
                    *(step.cmd for step in migrations),
                    *self._plan(release.images, opts.timeout),
                    "on failure or Ctrl-C: the new containers removed, the proxy left on (or "
                    "switched back to) the containers running before, workers put back on "
                    "their previous images (components this release adds are removed)",
                    *(
                        [
                            f"point-in-time recovery: archiving from {pitr.SERVICE} checked end to"
                            " end, a full base backup if the repository has none"
                        ]
                        if pitr.enabled(self.env)
                        else []
                    ),
                    *([schedule] if schedule else []),
                ],
            )
            return
        self._refuse_in_maintenance(opts)
        preflight(self, release)
        ask(self.env, f"Deploy {release.refs} to {env}?", opts)
        _run_migrations(migrations)
        self._rollout(release.images, opts.timeout, "deployed")
        self._mark_environment()
        say(f"{env}: deployed and healthy")
        if pitr.enabled(self.env):
            # Here, not before the rollout: a first deploy starts the server only now. The
            # release stays live if this fails; only archiving is not set up.
            try:
                pitr.setup(self.cfg, self.env)
            except Exit as exc:
                raise Exit(
                    f"{exc.message} (the release is deployed and serving; run `invoke deploy "
                    f"--env {env}` again once this is fixed)",
                    code=exc.code,
                ) from None
        self._start_scheduler(schedule)

    def _start_scheduler(self, schedule: Command | str | None) -> None:
        """Start the backup scheduler (scheduler.start), after the release: it is live either
        way, and a scheduler that cannot start fails the task in one sentence."""
        if isinstance(schedule, str):
            say(f"warning: {schedule}")
        elif schedule is not None:
            try:
                execute(schedule, "starting the backup scheduler")
            except EngineError as exc:
                raise Exit(
                    f"shipyard: {exc} (the release is deployed and serving, but backups are not"
                    f" scheduled: run `invoke deploy --env {self.env.name}` again once this is"
                    " fixed)",
                    code=1,
                ) from None
            say(f"{self.env.name}: backups scheduled ({compose_engine.BACKUP_FILE}, scheduler)")

    def running(self) -> dict[str, str]:
        with contextlib.closing(docker_engine.client()) as client:
            running = docker_engine.running_images(client, self._project())
        return {c.name: running[c.name] for c in self.cfg.components if c.name in running}

    def _project(self) -> str:
        return compose_engine.project_name(self.cfg.root / self.env.compose_file, self.cfg.service)

    def _refuse_in_maintenance(self, opts: Options) -> None:
        if opts.during_maintenance:
            return
        with contextlib.closing(docker_engine.client()) as client:
            since = proxy.maintenance_since(client, self._project())
        refuse_in_maintenance(self.env, since, opts)

    def maintenance(self, on: bool, retry_after: int, opts: Options) -> None:
        env, project = self.env.name, self._project()
        file = f"{proxy.VOLUME}/{proxy.MAINTENANCE}"
        if opts.dry_run:
            what = f"a 503 page (Retry-After: {retry_after})" if on else "no maintenance page"
            plan(
                f"maintenance {'on' if on else 'off'} for {self.cfg.service} on {env}",
                [f"write {what} to {file} in {project}'s proxy, then `caddy reload`"],
            )
            return
        if on:
            ask(self.env, f"Answer every request to {env} with the maintenance page?", opts)
        with contextlib.closing(docker_engine.client()) as client:
            proxy.apply(client, project, proxy.MAINTENANCE, proxy.maintenance(on, retry_after))
        if on:
            say(f"{env}: in maintenance: every request gets the 503 page (proxy/maintenance/)")
        else:
            say(f"{env}: maintenance off: the service answers again")

    def _stack(self, timeout: int) -> switch.Stack:
        file, project = self.env.compose_file, self._project()
        replicas = {comp.name: self.env.replicas_of(comp.name) for comp in self.cfg.components}
        return switch.Stack(self.cfg.root, file, project, timeout, replicas, self._variables())

    def _refuse_without_proxy(self) -> None:
        """A release switches http components at the proxy; a Compose file without one (the
        dev stack, compose.yaml) is for `docker compose up`, not for releases."""
        file = self.env.compose_file
        if not any(c.kind == "http" for c in self.cfg.components):
            return
        try:
            has_proxy = proxy.SERVICE in compose_engine.services(self.cfg.root / file)
        except EngineError as exc:
            raise Exit(f"shipyard: {exc}; nothing was changed", code=1) from None
        if not has_proxy:
            raise Exit(
                f"shipyard: {file} has no `{proxy.SERVICE}` service to switch releases at, so "
                f"{self.env.name} is not deployed with `invoke deploy`: run `docker compose "
                f"--file {file} up --wait` there. Nothing was changed",
                code=1,
            )

    def _refuse_unscalable(self, images: Mapping[str, str]) -> None:
        """Stop before any change when the Compose file makes a component unable to run the
        containers a release needs: an http component runs its new containers beside the old
        ones, a worker its replicas side by side."""
        file = self.env.compose_file
        http, workers = self._split(images)
        side_by_side = [c.name for c in http]
        side_by_side += [w for w in workers if self.env.replicas_of(w) > 1]
        try:
            reasons = {
                name: compose_engine.unscalable(self.cfg.root / file, name) for name in side_by_side
            }
        except EngineError as exc:
            raise Exit(f"shipyard: {exc}; nothing was changed", code=1) from None
        for name, why in reasons.items():
            if why:
                raise Exit(
                    f"shipyard: {name} in {file} cannot run several containers side by side "
                    f"(a release starts the new ones beside the old, and {self.env.name} asks "
                    f"for {self.env.replicas_of(name)}): {why}. Nothing was changed",
                    code=1,
                )

    def _split(self, images: Mapping[str, str]) -> tuple[list[config.Component], list[str]]:
        """The release's http components (switched at the proxy) and its workers."""
        http = [c for c in self.cfg.components if c.name in images and c.kind == "http"]
        return http, [name for name in images if name not in {c.name for c in http}]

    def _services(self, images: Mapping[str, str]) -> list[str]:
        """The stack's other services (proxy, databases): started first, never switched."""
        declared = compose_engine.services(self.cfg.root / self.env.compose_file)
        apps = {c.name for c in self.cfg.components} | set(images) | {compose_engine.MIGRATE}
        return [name for name in declared if name not in apps]

    def _services_up(self, images: Mapping[str, str], timeout: int) -> Command:
        """The proxy and databases up, the proxy told the host it serves (its HTTPS site)."""
        return compose_engine.up(
            self.cfg.root,
            self.env.compose_file,
            images,
            timeout,
            self._services(images),
            env=self._variables(),
        )

    def _variables(self) -> dict[str, str]:
        # Part of the services' definitions (the proxy's site, the apps' <NAME>_PUBLIC_URL):
        # every command creating containers passes the same, or Compose would see a change and
        # recreate the proxy, or start an app with another host.
        return {"SHIPYARD_HOST": self.env.host}

    def _copies(self) -> list[files.Copy]:
        return files.required(self.cfg.root, self.env.compose_file, self.env.name)

    def _files_steps(self, images: Mapping[str, str]) -> list[Command | str]:
        """Create the services that read the repository's files, and put the files in."""
        copies = self._copies()
        if not copies:
            return []
        root, file = self.cfg.root, self.env.compose_file
        create = files.create(root, file, images, copies, self._variables())
        return [create, files.describe(root, copies)]

    def _put_files(self, images: Mapping[str, str], project: str) -> None:
        copies = self._copies()
        if not copies:
            return
        root, file = self.cfg.root, self.env.compose_file
        execute(
            files.create(root, file, images, copies, self._variables()),
            f"creating the services of {self.env.name}",
        )
        with contextlib.closing(docker_engine.client()) as client:
            files.put(client, project, copies)

    def _smoke(self, images: Mapping[str, str]) -> Command | None:
        """The environment's smoke check, in a one-off container of the new image of its
        component (the first http component unless it names one)."""
        smoke = self.env.smoke
        if smoke is None:
            return None
        component, file = smoke_component(self.cfg, smoke), self.env.compose_file
        return compose_engine.run_once(
            self.cfg.root, file, images, component, smoke.command, self._variables()
        )

    def _run_smoke(self, images: Mapping[str, str], project: str) -> None:
        smoke, check = self.env.smoke, self._smoke(images)
        if smoke is None or check is None:
            return
        say(f"$ {check}")
        try:
            # Captured, so a failure can quote its last lines; shown either way.
            result = capture(check, what="the smoke check", timeout=smoke.timeout)
        except EngineError:
            # A check killed at its timeout leaves its container behind: remove it.
            with contextlib.closing(docker_engine.client()) as client:
                docker_engine.remove_one_offs(client, project)
            raise
        output = result.stdout + result.stderr
        if output.strip():
            print(output.rstrip(), flush=True)
        if result.returncode:
            raise EngineError(smoke_failure(smoke.command, result.returncode, output))

    def _plan(self, images: Mapping[str, str], timeout: int) -> list[Command | str]:
        stack, (http, workers) = self._stack(timeout), self._split(images)
        steps: list[Command | str] = [
            *self._files_steps(images),
            self._services_up(images, timeout),
            *switch.plan_steps(stack, images, http),
        ]
        if workers:
            steps.append(_workers_up(stack, images, workers))
        smoke = self._smoke(images)
        if smoke:
            steps += [
                smoke,
                "a failing smoke check rolls back like a failed health check: until it passes "
                "the old containers of each http component keep running (the drain and stop "
                "above wait for it), so the proxy is only pointed back at them",
            ]
        return steps

    def _rollout(self, images: Mapping[str, str], timeout: int, status: str) -> None:
        """The other services up, each http component switched, then the workers replaced; on
        failure or Ctrl-C, back to what was running."""
        root, env = self.cfg.root, self.env.name
        stack, (http, workers) = self._stack(timeout), self._split(images)
        with contextlib.closing(docker_engine.client()) as client:
            running = docker_engine.running_images(client, stack.project)
        previous = {name: running[name] for name in images if name in running}
        switched: list[config.Component] = []
        # With a smoke check, each http component's old containers keep running (the proxy no
        # longer sends to them) until it passes: a failing check only points the proxy back.
        hold = self.env.smoke is not None
        held: dict[str, list[docker_engine.Replica]] = {}
        try:
            self._put_files(images, stack.project)
            execute(
                self._services_up(images, timeout),
                f"starting the services of {env}",
            )
            with contextlib.closing(docker_engine.client()) as client:
                for comp in http:
                    switched.append(comp)
                    held[comp.name] = switch.switch(client, stack, comp, images, hold=hold)
            if workers:
                try:
                    execute(_workers_up(stack, images, workers), "the workers")
                except EngineError as exc:
                    raise EngineError(f"{exc}{_health_detail(stack.project)}") from None
            self._run_smoke(images, stack.project)
            with contextlib.closing(docker_engine.client()) as client:
                switch.finish(client, held)
        except (EngineError, KeyboardInterrupt) as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted (Ctrl-C)" if interrupted else str(exc)
            state.record_deploy(root, env, {"images": dict(images), "status": "failed"})
            self._revert(
                stack, images, previous, switched, held, workers, reason, 130 if interrupted else 1
            )
        state.record_deploy(root, env, {"images": dict(images), "status": status})

    def _revert(
        self,
        stack: switch.Stack,
        images: Mapping[str, str],
        previous: dict[str, str],
        switched: list[config.Component],
        held: Mapping[str, list[docker_engine.Replica]],
        workers: list[str],
        reason: str,
        code: int,
    ) -> NoReturn:
        """Put back what ran before a failed rollout, then exit saying so."""
        root, env, file = self.cfg.root, self.env.name, self.env.compose_file
        if not previous:
            raise Exit(
                f"shipyard: the rollout of {env} failed: {reason}. There was no previous "
                f"version to roll back to; see `invoke logs --env {env}`",
                code=code,
            ) from None
        say(f"rollout failed ({reason}); rolling back to the previous images")
        back = {**images, **previous}
        try:
            with contextlib.closing(docker_engine.client()) as client:
                docker_engine.settle(client, stack.project)
                # The component that failed removed its own new containers; the ones switched
                # before it switch back, the same way.
                for comp in switched:
                    if held.get(comp.name):
                        # Held for the smoke check: still running, the proxy goes back to them.
                        switch.back(client, stack, comp, held[comp.name])
                    elif comp.name in previous:
                        switch.switch(client, stack, comp, back, keep_running=True)
                    else:
                        switch.retire_component(client, stack, comp)
            added = [name for name in workers if name not in previous]
            if added:
                # The file (this release's) still names every image, so all stay set.
                execute(compose_engine.remove(root, file, images, added), "the rollback")
            kept = [name for name in workers if name in previous]
            if kept:
                _restore(_workers_up(stack, back, kept))
        except (EngineError, KeyboardInterrupt) as again:
            raise Exit(
                f"shipyard: the rollout of {env} failed ({reason}) and so did the rollback "
                f"({again}); see `invoke status --env {env}`",
                code=1,
            ) from None
        state.record_deploy(root, env, {"images": previous, "status": "rolled-back"})
        raise RolledBack(
            f"shipyard: the rollout of {env} failed ({reason}); rolled back, the previous "
            "version is serving",
            code=code,
        ) from None

    def rollback(self, opts: Options) -> None:
        env = self.env.name
        self._refuse_without_proxy()
        self._copies()  # a missing file is refused before anything changes
        if not opts.dry_run:
            self._refuse_another_environment()
        target = state.rollback_target(state.deploys(self.cfg.root, env))
        if target is None:
            raise Exit(
                f"shipyard: {env} has no healthy release before the current one recorded in "
                f"{state.FOLDER}/deploys-{env}.json to roll back to; nothing was changed",
                code=1,
            )
        self._refuse_unscalable(target)
        if opts.dry_run:
            plan(
                f"rollback {self.cfg.service} on {env} (compose)", self._plan(target, opts.timeout)
            )
            return
        ask(self.env, f"Roll {env} back to {', '.join(target.values())}?", opts)
        # The same switch as a release: the version serving now keeps serving if it fails.
        self._rollout(target, opts.timeout, "rolled-back")
        say(f"{env}: rolled back to {', '.join(target.values())}")

    def _current(self) -> dict[str, str]:
        """The images of the last deploy, for Compose commands that only read (ps, logs): the
        file requires every *_IMAGE to be set even when the value does not matter."""
        history = state.deploys(self.cfg.root, self.env.name)
        last: dict[str, str] = history[-1]["images"] if history else {}
        return {comp.name: last.get(comp.name, "unknown") for comp in self.cfg.components}

    def _read(self, *args: str) -> Command:
        return compose_engine.compose(
            self.cfg.root, self.env.compose_file, *args, images=self._current()
        )

    def status(self) -> None:
        execute(self._read("ps"), "compose ps")
        with contextlib.suppress(EngineError), contextlib.closing(docker_engine.client()) as client:
            since = proxy.maintenance_since(client, self._project())
            if since:
                say(f"{self.env.name}: in maintenance mode since {since}")
            errors = proxy.certificate_errors(client, self._project())
            if errors:
                say(f"{self.env.name}: the proxy's last certificate errors (newest last):")
                for error in errors[-3:]:
                    print(f"  {error}")

    def logs(self, component: str, tail: int, follow: bool) -> None:
        args = ["logs", "--tail", str(tail), *(["--follow"] if follow else [])]
        execute(self._read(*args, *([component] if component else [])), "reading logs")


def _workers_up(stack: switch.Stack, images: Mapping[str, str], workers: list[str]) -> Command:
    """Workers are recreated in place, each with its replica count: nothing routes to them, so
    two generations never need to run side by side."""
    scale = {name: stack.replicas.get(name, 1) for name in workers}
    return compose_engine.up(
        stack.root, stack.file, images, stack.timeout, workers, scale, stack.variables
    )


def _run_migrations(steps: list[Step]) -> None:
    for step in steps:
        try:
            execute(step.cmd, step.what)
        except EngineError as exc:
            raise Exit(
                f"shipyard: {exc}; the deploy stopped before the rollout and the running "
                "version keeps serving",
                code=1,
            ) from None


def _health_detail(project: str) -> str:
    """Why the new containers are not healthy, from their health logs; empty if unknown."""
    try:
        with contextlib.closing(docker_engine.client()) as client:
            failures = docker_engine.health_failures(client, project)
    except EngineError:
        return ""  # the rollout's own error already says what went wrong
    return "".join(f"; {service} {why}" for service, why in sorted(failures.items()))


def _restore(up: Command, attempts: int = 3) -> None:
    """Run the rollback `up`, retrying briefly: an interrupted `up` can leave the daemon still
    removing a container, which makes the next `up` fail for a few seconds."""
    for attempt in range(1, attempts + 1):
        try:
            execute(up, "the rollback")
            return
        except EngineError:
            if attempt == attempts:
                raise
            time.sleep(5 * attempt)
