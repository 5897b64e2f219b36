"""The kit's backup image as backup/Dockerfile makes it, for the real-engine tests: PostgreSQL 15
client tools, zstd, python3 and shipyard, uid 1000; with `pitr`, also pgBackRest and the server
set up as the official image's entrypoint runs it (the image compose.prod.yaml's `postgres`
runs with point_in_time_recovery). Built from the test PostgreSQL image: the generated
Dockerfile installs shipyard from its git pin, which this machine cannot reach, so this one
copies the shipyard under test and its installed dependencies in.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.servers.docker import POSTGRES_ENTRYPOINT, POSTGRES_LOCAL, Dockerd

DOCKERFILE = """\
FROM {base}
USER root
RUN set -eux; apt-get update; \\
    apt-get install -y --no-install-recommends python3 zstd{packages}; \\
    rm -rf /var/lib/apt/lists/*; \\
    useradd --system --uid 1000 --user-group --home-dir /nonexistent shipyard; \\
    mkdir -p /backups /scratch; chown 1000:1000 /backups /scratch{server}
COPY site/ /opt/shipyard/
COPY --chmod=755 bin/ /usr/local/bin/
ENV PYTHONPATH=/opt/shipyard PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT []
"""

# As the official image lets any user run the server: the data and socket folders open to all
# (the entrypoint makes PGDATA, a folder inside, 0700), and its entrypoint by its name.
SERVER = """; \\
    mkdir -p /var/lib/pgbackrest; chown 1000:1000 /var/lib/pgbackrest; \\
    chmod 1777 /var/lib/postgresql/data; chmod 3777 /var/run/postgresql
COPY --chmod=755 docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh"""

# The test image's entrypoint, trusting the local socket as the official image's initdb does
# (pgBackRest and `shipyard backup pitr` connect there without a password).
ENTRYPOINT = "#!/bin/sh\n" + POSTGRES_ENTRYPOINT.replace(
    "-A scram-sha-256", "--auth-local=trust --auth-host=scram-sha-256"
)


def _runtime_distributions() -> list[metadata.Distribution]:
    """shipyard's installed dependencies, with their own, as this test run has them."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement("shipyard")]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist
        for spec in dist.requires or []:
            dep = Requirement(spec)
            # Only what this requirement pulls in: its extras' markers, never optional ones.
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in req.extras or {""}
            ):
                todo.append(dep)
    del found["shipyard"]  # editable: copied from src/ instead
    return list(found.values())


def build_backup_image(dockerd: Dockerd, tag: str, *, pitr: bool = False) -> str:
    """Build the image as `tag` (local: compose runs a local image without pulling)."""
    with tempfile.TemporaryDirectory() as ctx:
        site = Path(ctx, "site")
        for dist in _runtime_distributions():
            for file in dist.files or []:
                source = Path(str(dist.locate_file(file)))
                if file.parts[0] == ".." or "__pycache__" in file.parts or not source.is_file():
                    continue  # console scripts and bytecode
                (site / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, site / file)
        shutil.copytree(
            REPO / "src" / "shipyard",
            site / "shipyard",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        # shipyard's commands (`shipyard`, `shipyard-pgbackrest-push`), as pip would install them.
        Path(ctx, "bin").mkdir()
        for script in metadata.distribution("shipyard").entry_points.select(
            group="console_scripts"
        ):
            module, _, function = script.value.partition(":")
            Path(ctx, "bin", script.name).write_text(
                f"#!/usr/bin/python3\nimport sys\nfrom {module} import {function}\n"
                f"sys.exit({function}())\n"
            )
        Path(ctx, "docker-entrypoint.sh").write_text(ENTRYPOINT)
        dockerfile = DOCKERFILE.format(
            base=POSTGRES_LOCAL,
            packages=" pgbackrest" if pitr else "",
            server=SERVER if pitr else "",
        )
        Path(ctx, "Dockerfile").write_text(dockerfile)
        proc = subprocess.run(
            [dockerd.cli, "build", "--network", "host", "--tag", tag, ctx],
            env={**dockerd.env, "DOCKER_BUILDKIT": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return tag
