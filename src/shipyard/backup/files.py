"""Files: the components' data paths archived beside the dump, checked and restored.

Each data path is `tar` (modes, times, numeric owners) piped through `zstd` into the storage
as `<id>/files/<component><path>.tar.zst`, hashed as it streams; the manifest written last
lists each archive with its size, sha256 and entry count, so a backup whose archives are not
all stored is never complete. The engine sees a data path where its container mounts it:
`<root>/<component><path>` (compose.backup.yaml mounts them under /data, read-only for
backups, writable in its `files-restore` service).

A restore extracts every archive into a staging folder inside its data path first (same
filesystem, so the swap is renames); only when all extracted does each path's content move
aside, the restored content move in, and the old content go. A failure before the swap
leaves every data path as it was; a move that fails during it is undone. The engine is not
root: a read-only folder it owns is lent its owner's write bit to move (a folder's move
changes its `..`), one another user owns is refused before anything moves.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from shipyard.backup.db import ended, pipe, tool
from shipyard.backup.report import BackupError, Log, human_size
from shipyard.backup.storage import HashingReader, Storage, download

FILES = "files"
# Where compose.backup.yaml mounts the data paths: /data/<component><path>.
DEFAULT_ROOT = Path("/data")
# Folders a restore stages in, inside the data path; never archived.
STAGING = ".shipyard-restore-"
ASIDE = ".shipyard-old-"
# How to let a restore as the engine's user (not root) through a folder it may not change.
FIX = "make it writable by its owner (chmod u+w), or restore as root; nothing was changed"
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class DataPath:
    """A component's data path and the folder it is mounted at here."""

    component: str
    path: str  # as in the component's container, e.g. /app/uploads
    source: Path

    @property
    def name(self) -> str:
        return f"{self.component}:{self.path}"


def data_path(spec: str, root: Path = DEFAULT_ROOT) -> DataPath:
    """`COMPONENT:/ABSOLUTE/PATH` (the engine's --data-path) mounted under `root`."""
    component, sep, path = spec.partition(":")
    pure = PurePosixPath(path)
    if not sep or not component or not pure.is_absolute() or ".." in pure.parts:
        raise BackupError(
            f"--data-path {spec!r}: give COMPONENT:/absolute/path, e.g. api:/app/uploads"
        )
    return DataPath(component, str(pure), root / component / pure.relative_to("/"))


def key(backup_id: str, data: DataPath) -> str:
    return f"{backup_id}/{FILES}/{data.component}{data.path}.tar.zst"


class _Archive(HashingReader):
    """zstd's output of tar's as a file object; at its end the upload fails unless tar and
    zstd both succeeded."""

    def __init__(self, data: DataPath, index: IO[bytes], log: Log) -> None:
        self.data, self.index, self.log = data, index, log
        # tar's warnings go to a file, not a pipe read at the end: a pipe full of them (an app
        # writing to many files during the backup) would stop tar, and the backup with it.
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.tar = subprocess.Popen(
            [
                tool("tar"),
                "--create",
                "--file=-",
                # POSIX (pax) headers: exact modification times, long names, any bytes.
                "--format=posix",
                f"--directory={data.source}",
                "--numeric-owner",
                "--verbose",
                f"--index-file=/dev/fd/{index.fileno()}",
                # A restore's leftovers, should one have been killed mid-way.
                f"--exclude={STAGING}*",
                f"--exclude={ASIDE}*",
                ".",
            ],
            stdout=subprocess.PIPE,
            stderr=self.errors,
            pass_fds=(index.fileno(),),
        )
        tar_out = pipe(self.tar.stdout)
        self.zstd = subprocess.Popen(
            [tool("zstd"), f"-{ZSTD_LEVEL}", "-T0", "-q", "-c"],
            stdin=tar_out,
            stdout=subprocess.PIPE,
        )
        tar_out.close()  # only zstd reads it, so a dying zstd stops tar
        super().__init__(pipe(self.zstd.stdout))

    def finish(self) -> None:
        zstd_rc = self.zstd.wait()
        tar_rc = self.tar.wait()
        self.errors.seek(0)
        errors = self.errors.read().decode(errors="replace").strip()
        # zstd first: tar dies of a broken pipe when zstd does (killed, out of memory).
        if zstd_rc != 0:
            raise BackupError(f"archiving {self.data.name} failed: zstd {ended(zstd_rc)}")
        # GNU tar exits 1 when a file changed while it was read (the app kept writing): the
        # archive is whole and holds the file as it was read; 2 is a real failure.
        if tar_rc == 1:
            self.log(f"{self.data.name}: files changed while archived: {errors}")
        elif tar_rc != 0:
            raise BackupError(f"archiving {self.data.name} failed: tar {ended(tar_rc)}: {errors}")

    def close(self) -> None:
        for proc in (self.tar, self.zstd):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.source.close()
        self.errors.close()


def archive(storage: Storage, backup_id: str, data: DataPath, log: Log) -> dict[str, Any]:
    """Stream one data path into the storage; its manifest entry."""
    if not data.source.is_dir():
        raise BackupError(
            f"{data.name} is not mounted at {data.source}: the backup service mounts each data "
            "path (compose.backup.yaml); re-render the kit after adding one"
        )
    stored = key(backup_id, data)
    with tempfile.TemporaryFile() as index:
        stream = _Archive(data, index, log)
        try:
            storage.put_stream(stored, stream)  # type: ignore[arg-type]
        finally:
            stream.close()
        index.seek(0)
        entries = sum(1 for _ in index)
    log(f"{data.name}: {entries} entries, {human_size(stream.size)}")
    return {
        "component": data.component,
        "path": data.path,
        "key": stored,
        "format": "tar (GNU, numeric owners) compressed by zstd",
        "compression": f"zstd -{ZSTD_LEVEL}",
        "entries": entries,
        "size": stream.size,
        "sha256": stream.sha256.hexdigest(),
    }


def _fetch(storage: Storage, entry: dict[str, Any], workdir: Path, backup_id: str) -> Path:
    """Download an archive and check its size and sha256 against the manifest."""
    local = workdir / f"{secrets.token_hex(4)}.tar.zst"
    size, sha256 = download(storage, entry["key"], local)
    if size != entry["size"] or sha256 != entry["sha256"]:
        raise BackupError(
            f"backup {backup_id}: the archive of {entry['component']}:{entry['path']} is "
            f"corrupted: {size} bytes with sha256 {sha256}, the manifest says "
            f"{entry['size']} bytes with sha256 {entry['sha256']}; nothing was changed"
        )
    return local


def _untar(archive_file: Path, *tar_args: str) -> str:
    """zstd -d | tar ARGS; tar's stdout. BackupError when either fails."""
    with archive_file.open("rb") as compressed:
        unzstd = subprocess.Popen(
            [tool("zstd"), "-d", "-q", "-c"], stdin=compressed, stdout=subprocess.PIPE
        )
        unzstd_out = pipe(unzstd.stdout)
        tar = subprocess.run(
            [tool("tar"), "--file=-", *tar_args],
            stdin=unzstd_out,
            capture_output=True,
            check=False,
        )
        unzstd_out.close()
        zstd_rc = unzstd.wait()
    if zstd_rc != 0 or tar.returncode != 0:
        detail = tar.stderr.decode(errors="replace").strip()
        raise BackupError(
            f"cannot read an archive: zstd exited {zstd_rc}, tar {tar.returncode}: {detail}"
        )
    return tar.stdout.decode(errors="replace")


def verify(storage: Storage, manifest: dict[str, Any], log: Log) -> int:
    """Check every archive of a backup: sha256, a full read, and its entry count; how many."""
    entries = manifest.get(FILES, [])
    with tempfile.TemporaryDirectory(prefix="shipyard-files-") as work:
        for entry in entries:
            local = _fetch(storage, entry, Path(work), manifest["id"])
            listed = _untar(local, "--list").count("\n")
            local.unlink()
            if listed != entry["entries"]:
                raise BackupError(
                    f"backup {manifest['id']}: the archive of {entry['component']}:"
                    f"{entry['path']} holds {listed} entries, the manifest says {entry['entries']}"
                )
            log(f"{entry['component']}:{entry['path']}: sha256 and {listed} entries match")
    return len(entries)


def restore(storage: Storage, manifest: dict[str, Any], wanted: list[DataPath], log: Log) -> None:
    """Replace each wanted data path's content with the backup's archive of it (the caller
    checked the backup holds one of each). A data path without write permission (as archived:
    an app's read-only folder) is lent its owner's write bit meanwhile."""
    for data in wanted:
        if not data.source.is_dir():
            raise BackupError(f"{data.name} is not mounted at {data.source}")
        _check_movable(data)
    swapped: dict[DataPath, int] = {}  # a data path whose content was replaced: its archived mode
    try:
        with ExitStack() as lent:
            for data in wanted:
                lent.enter_context(_writable(data.source))
            staged = _stage(storage, manifest, wanted, log)
            for i, (data, staging) in enumerate(staged):
                try:
                    swapped[data], left = _swap(data, staging)
                except BaseException as exc:
                    for _data, unused in staged[i:]:
                        _remove(unused)
                    if not isinstance(exc, BackupError):
                        raise
                    done = ", ".join(d.name for d, _ in staged[:i]) or "none"
                    raise BackupError(
                        f"{exc}; the data paths after it are as they were (restored before it: "
                        f"{done})"
                    ) from None
                log(f"{data.name}: now holds backup {manifest['id']}")
                if left is not None:
                    log(
                        f"{data.name}: its old content stays in {left.name} (uid "
                        f"{os.geteuid()} may not delete all of it; never archived): remove it "
                        "as the files' owner"
                    )
    finally:
        for data, mode in swapped.items():
            _settle(data, mode, log)


def _stage(
    storage: Storage, manifest: dict[str, Any], wanted: list[DataPath], log: Log
) -> list[tuple[DataPath, Path]]:
    """Extract each data path's archive into a staging folder inside it; on any failure,
    every staging folder is removed."""
    archived = {(e["component"], e["path"]): e for e in manifest[FILES]}
    staged: list[tuple[DataPath, Path]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-files-") as work:
            for data in wanted:
                entry = archived[(data.component, data.path)]
                local = _fetch(storage, entry, Path(work), manifest["id"])
                staging = data.source / f"{STAGING}{secrets.token_hex(3)}"
                staging.mkdir()
                staged.append((data, staging))
                _untar(
                    local,
                    "--extract",
                    f"--directory={staging}",
                    "--numeric-owner",
                    "--preserve-permissions",
                )
                local.unlink()
                log(f"{data.name}: extracted, checked against the manifest's sha256")
    except BaseException:
        for _data, staging in staged:
            _remove(staging)
        raise
    return staged


def _check_movable(data: DataPath) -> None:
    """BackupError, changing nothing, when this user may not write in the data path, nor lend
    it the write bit, or a folder in it cannot move aside (_lendable)."""
    if not _lendable(data.source):
        raise BackupError(
            f"{data.name}: uid {os.geteuid()} may not write in {data.source}, nor lend it the "
            f"permission (another user owns it); {FIX}"
        )
    stuck = [
        entry.name
        for entry in data.source.iterdir()
        if entry.is_dir() and not entry.is_symlink() and not _lendable(entry)
    ]
    if stuck:
        raise BackupError(
            f"{data.name}: cannot move {', '.join(sorted(stuck))}, a folder without write "
            f"permission that uid {os.geteuid()} does not own; {FIX}"
        )


def _swap(data: DataPath, staging: Path) -> tuple[int, Path | None]:
    """Move the data path's content aside, staging's content in, and drop the old content:
    the data path's mode as archived (the staging folder's, '.'), and the folder the old
    content stays in when some of it could not be deleted. When a move fails (or the restore
    is interrupted), every move done is undone first: BackupError, naming what could not be
    put back if any. The caller lends the data path its write bit."""
    target = data.source
    archived = stat.S_IMODE(staging.stat().st_mode)
    aside = target / f"{ASIDE}{secrets.token_hex(3)}"
    done: list[tuple[Path, Path]] = []
    with _writable(staging):
        try:
            aside.mkdir()
            moves = [(e, aside / e.name) for e in target.iterdir() if e not in (staging, aside)]
            moves += [(e, target / e.name) for e in staging.iterdir()]
            for src, dst in moves:
                _move(src, dst)
                done.append((src, dst))
        except BaseException as exc:
            stuck = _undo(done)
            with suppress(OSError):
                aside.rmdir()
            if not isinstance(exc, OSError):
                raise
            state = (
                f"{', '.join(stuck)} could not be put back: find the old content in {aside.name}"
                if stuck
                else "it is as it was"
            )
            raise BackupError(
                f"replacing the content of {data.name} failed ({exc}); {state}"
            ) from None
    staging.rmdir()
    return archived, None if _remove(aside) else aside


def _undo(done: list[tuple[Path, Path]]) -> list[str]:
    """Move each moved entry back, newest first, going on past a failure; the names of those
    that could not be."""
    stuck = []
    for src, dst in reversed(done):
        try:
            _move(dst, src)
        except OSError:
            stuck.append(src.name)
    return stuck


def _settle(data: DataPath, mode: int, log: Log) -> None:
    """Give a restored data path its archived mode. Only its owner may change it: on a volume
    another user owns (a Kubernetes claim's root: root with fsGroup 1000), the mode stays and
    the log says so; the content is restored either way."""
    current = stat.S_IMODE(data.source.stat().st_mode)
    if current == mode:
        return
    try:
        data.source.chmod(mode)
    except OSError as exc:
        log(
            f"{data.name}: the folder keeps mode {current:o}, not the archived {mode:o} "
            f"({exc.strerror}: uid {os.geteuid()} does not own it)"
        )


def _can(path: Path, mode: int) -> bool:
    """os.access as the effective user, the one the ownership checks compare with."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _lendable(folder: Path) -> bool:
    """A folder this user may write in, or lend its owner's write bit (its own). A folder
    without it cannot move to another folder, as anyone but root: its `..` entry changes."""
    return _can(folder, os.W_OK) or folder.stat().st_uid == os.geteuid()


@contextmanager
def _writable(folder: Path) -> Iterator[None]:
    """`folder` with its owner's write bit during the block, when it lacks it (a data path
    _check_movable passed, or a folder the restore made)."""
    if _can(folder, os.W_OK):
        yield
        return
    mode = stat.S_IMODE(folder.stat().st_mode)
    folder.chmod(mode | stat.S_IWUSR)
    try:
        yield
    finally:
        if folder.exists():
            folder.chmod(mode)


def _move(src: Path, dst: Path) -> None:
    """Rename src to dst, lending a folder without write permission its owner's write bit for
    the move (_lendable), its mode given back after."""
    mode = src.lstat().st_mode
    if not stat.S_ISDIR(mode) or _can(src, os.W_OK):
        src.rename(dst)
        return
    src.chmod(stat.S_IMODE(mode) | stat.S_IWUSR)
    try:
        src.rename(dst)
    except BaseException:
        with suppress(OSError):
            src.chmod(stat.S_IMODE(mode))
        raise
    with suppress(OSError):  # its own folder: only one gone meanwhile refuses it
        dst.chmod(stat.S_IMODE(mode))


def _remove(tree: Path) -> bool:
    """Delete a folder the restore made (staging, or the old content set aside), read-only
    folders in it included (each given its owner's bits first); False when some of it could
    not go (folders of another owner)."""
    _open(tree)
    for folder, dirs, _files in os.walk(tree):
        for name in dirs:
            _open(Path(folder) / name)
    shutil.rmtree(tree, ignore_errors=True)
    return not tree.exists()


def _open(folder: Path) -> None:
    """Give a folder (not a link to one) its owner's read, write and search bits, so what it
    holds can be listed and deleted; another owner's folder stays as it is."""
    mode = folder.lstat().st_mode
    if stat.S_ISDIR(mode) and not _can(folder, os.R_OK | os.W_OK | os.X_OK):
        with suppress(OSError):
            folder.chmod(stat.S_IMODE(mode) | stat.S_IRWXU)
