"""Image builds of the sample service with the generated Dockerfile, on a real dockerd.

Prints two ratios, measured side by side in one run:

- rebuild after a source-only change / cold build, median wall times of `invoke build`: the
  dependency installs must come from cache. Cold is a fresh CI runner's build: no BuildKit
  cache, no base image (pulled through the mirror) and no image an earlier run built (those
  hold the base image's layers). Target: <= 0.25. The same ratio against a cold build with the
  base image already present is printed beside it, and every run's times before the medians.
- final image size / (runtime base image + the app's production files), where the production
  files are what `npm ci --omit=dev` and `npm run build` leave in a clean checkout, minus what
  .dockerignore keeps out: the image must add nothing but the app. Target: <= 1.10.

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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_template, git, init_repo, render_kit  # noqa: E402
from tests.servers.docker import (  # noqa: E402
    MIRROR_STORAGE,
    Dockerd,
    import_base,
    node_local,
    publish_mirror_images,
    running_dockerd,
)
from tests.servers.registry import running_registry  # noqa: E402

REBUILD_TARGET = 0.25
SIZE_TARGET = 1.10
SERVICE = "bench-api"
NODE_VERSION = "22"


def _kit(work: Path, registry: str, mirror_answers: dict[str, str | int]) -> Path:
    root = render_kit(
        copy_template(work / "template"),
        {
            "project_name": "Bench API",
            "sample_app": True,
            **mirror_answers,
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


def _production_files(root: Path) -> int:
    """Bytes of the app as it runs: a clean checkout, production deps, built, minus ignores."""
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "app"
        clean.mkdir()
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
        for argv in (
            ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"],
            ["npm", "run", "build"],
        ):
            subprocess.run(argv, cwd=clean, check=True, capture_output=True)
        return _tree_bytes(clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="cold/rebuild pairs to take medians of")
    args = parser.parse_args()

    with (
        running_dockerd() as daemon,
        tempfile.TemporaryDirectory() as tmp,
        running_registry(Path(tmp) / "registry") as registry,
        running_registry(MIRROR_STORAGE) as mirror,
    ):
        images = publish_mirror_images(daemon, import_base(daemon), mirror)
        root = _kit(Path(tmp), registry, images.answers(NODE_VERSION))
        env = daemon.task_env
        cold: list[float] = []
        cached_base: list[float] = []
        warm: list[float] = []
        try:
            for run in range(args.runs):
                # Cold, as on a fresh CI runner: no build cache and no base image, which is
                # pulled through the mirror. Also timed: no build cache, base image present.
                # BuildKit's cache keeps the base image's layers until pruned, so prune last.
                _forget_builds(daemon, registry)
                daemon.run("rmi", node_local(NODE_VERSION))
                _prune(daemon)
                cold.append(_build(root, env))
                _restore_base(daemon, images.node(NODE_VERSION))
                _prune(daemon)
                cached_base.append(_build(root, env))
                _change_source(root, run)
                warm.append(_build(root, env))
        finally:
            _restore_base(daemon, images.node(NODE_VERSION))
        sha = git(root, "rev-parse", "HEAD")[:12]
        ref = f"{registry}/bench/{SERVICE}-{SERVICE}:{sha}"
        final, base = _sizes(daemon, ref)
        app = _production_files(root)

    for name, times in (("cold", cold), ("base image present", cached_base), ("rebuild", warm)):
        print(f"{name}: {', '.join(f'{t:.2f}s' for t in times)}")
    print(
        f"cold build {statistics.median(cold):.1f}s (base image present: "
        f"{statistics.median(cached_base):.1f}s), rebuild {statistics.median(warm):.1f}s"
    )
    print(
        "rebuild after a source-only change / cold build with the base image present: "
        f"{statistics.median(warm) / statistics.median(cached_base):.3f}"
    )
    rebuild = statistics.median(warm) / statistics.median(cold)
    size = final / (base + app)
    print(
        f"rebuild after a source-only change / cold build: {rebuild:.3f} "
        f"(target <= {REBUILD_TARGET})"
    )
    print(
        f"image {final / 1e6:.1f} MB / (base {base / 1e6:.1f} MB + app {app / 1e6:.2f} MB): "
        f"{size:.3f} (target <= {SIZE_TARGET})"
    )


def _restore_base(daemon: Dockerd, mirrored: str) -> None:
    """Put the base image back under its local name (later runs and sessions expect it)."""
    with contextlib.closing(daemon.client()) as client:
        if any(node_local(NODE_VERSION) in image.tags for image in client.images.list()):
            return
    daemon.run("pull", mirrored)
    daemon.run("tag", mirrored, node_local(NODE_VERSION))
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


def _change_source(root: Path, run: int) -> None:
    """A source-only change, committed (the image tag follows the commit)."""
    main_js = root / "src" / "main.js"
    main_js.write_text(main_js.read_text() + f"// source-only change {run}\n")
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


def _sizes(daemon: Dockerd, ref: str) -> tuple[int, int]:
    """Sizes of the built image and of the runtime base (the image the mirror serves)."""
    with contextlib.closing(daemon.client()) as client:
        final = int(client.images.get(ref).attrs["Size"])
        base = int(client.images.get(node_local(NODE_VERSION)).attrs["Size"])
    return final, base


if __name__ == "__main__":
    main()
