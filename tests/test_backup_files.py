"""Files backups on the real engines (PostgreSQL, tar, zstd, a local folder and the S3 server):
a data path round trip restores a byte-identical tree with modes, owners and times; a damaged
archive is refused before anything changes; a data path that cannot be read leaves nothing
listed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shipyard import backup, config
from shipyard.backup import engine
from shipyard.backup import files as data_files
from tests.backup_data import children, shipyard_cli
from tests.conftest import forked_hits
from tests.servers.postgres import PostgresServer

SPEC = "api:/app/uploads"


def make_tree(root: Path) -> Path:
    """A data path with what uploads hold: nested folders, odd names, modes, a link."""
    top = root / "api" / "app" / "uploads"
    (top / "2026" / "12").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "2026" / "12" / "photo.jpg").write_bytes(os.urandom(300_000))
    (top / "2026" / "12" / "notes é ü.txt").write_text("naïve text\n")
    (top / "secret.key").write_bytes(b"\x00\x01private")
    (top / "secret.key").chmod(0o600)
    (top / "run.sh").write_text("#!/bin/sh\necho hi\n")
    # Modes a restore must bring back exactly, permissive ones included.
    (top / "run.sh").chmod(0o750)
    (top / "2026").chmod(0o2750)
    (top / "latest").symlink_to("2026/12/photo.jpg")
    os.chown(top / "2026" / "12" / "photo.jpg", 1000, 1000)
    os.utime(top / "run.sh", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    top.chmod(0o770)
    return top


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry's type, mode, owner, content and modification time (the top's own too,
    but its time: a restore moves entries in and out of it)."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        name = path.relative_to(top).as_posix()
        mtime = st.st_mtime_ns if path != top else None
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("link", str(path.readlink()), mtime)
        elif stat.S_ISDIR(st.st_mode):
            found[name] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[name] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest, mtime)
    return found


def damage(top: Path) -> None:
    (top / "secret.key").unlink()
    (top / "2026" / "12" / "photo.jpg").write_bytes(b"overwritten")
    (top / "stray.txt").write_text("not in the backup")
    (top / "run.sh").chmod(0o777)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_files_round_trip_restores_an_identical_tree(
    where: str, database: str, postgres_server: PostgresServer, tmp_path: Path, request: Any
) -> None:
    """`shipyard backup run --data-path`, verify, damage, `restore --files`: the tree is back
    exactly; the safety backup holds the damaged one."""
    target = _target(where, tmp_path, request, "prod")
    root = tmp_path / "data"
    top = make_tree(root)
    before = snapshot(top)
    env = postgres_server.env(database)
    data = ["--data-path", SPEC, "--data-root", str(root)]

    made = shipyard_cli("backup", "run", "--target", target, *data, env=env)
    assert made.returncode == 0, made.stderr
    store = backup.from_url(target)
    (taken,) = backup.list_backups(store)
    (entry,) = taken.manifest["files"]
    assert entry["component"] == "api"
    assert entry["path"] == "/app/uploads"
    assert entry["key"] == f"{taken.id}/files/api/app/uploads.tar.zst"
    assert entry["entries"] == len(before)
    assert config.schema_errors(taken.manifest, "backup-manifest") == []
    assert f"{taken.id}/files/api/app/uploads.tar.zst" in store.list_keys()

    checked = shipyard_cli("backup", "verify", "--target", target, env=env)
    assert checked.returncode == 0, checked.stderr
    assert backup.list_backups(store)[0].verified["files"] == 1  # type: ignore[index]

    damage(top)
    damaged = snapshot(top)
    back = shipyard_cli("backup", "restore", "--files", "--yes", "--target", target, *data, env=env)
    assert back.returncode == 0, back.stderr
    assert snapshot(top) == before
    # Nothing of the restore's staging is left in the data path.
    assert not [p for p in top.iterdir() if p.name.startswith(".shipyard-")]
    # The safety backup holds the damaged tree: restoring it brings the damage back.
    safety = backup.list_backups(store)[-1]
    assert safety.manifest["kind"] == "safety"
    engine.restore_files(
        store, [engine.data_path(SPEC, root)], safety.id, safety_backup=False, log=print
    )
    assert snapshot(top) == damaged


def test_a_corrupted_archive_is_refused_and_nothing_changes(database: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    top = make_tree(root)
    store = backup.from_url((tmp_path / "store").as_uri())
    wanted = [engine.data_path(SPEC, root)]
    made = engine.backup(store, files=wanted, log=print)
    _flip_a_byte(tmp_path / "store" / made.manifest["files"][0]["key"])
    damage(top)
    damaged = snapshot(top)

    with pytest.raises(engine.BackupError) as refused:
        engine.restore_files(store, wanted, made.id, log=print)
    assert str(refused.value).startswith(
        f"backup {made.id}: the archive of api:/app/uploads is corrupted: "
    )
    assert str(refused.value).endswith("; nothing was changed")
    assert snapshot(top) == damaged
    with pytest.raises(engine.BackupError, match=r"is corrupted"):
        engine.verify(store, made.id, log=print)
    # Asking for a data path the backup does not hold changes nothing either.
    other = [engine.data_path("jobs:/srv/x", root)]
    with pytest.raises(engine.BackupError, match=r"holds no files of jobs:/srv/x; nothing"):
        engine.restore_files(store, other, made.id, log=print)


def _two_data_paths(
    tmp_path: Path,
) -> tuple[Path, Path, backup.Storage, list[data_files.DataPath], engine.Backup]:
    """make_tree's data path and a second one (jobs:/srv/files) backed up into a local store:
    the two folders, the store, the data paths and the backup."""
    root = tmp_path / "data"
    top = make_tree(root)
    jobs = root / "jobs" / "srv" / "files"
    jobs.mkdir(parents=True)
    (jobs / "report.csv").write_text("a,b\n")
    store = backup.from_url((tmp_path / "store").as_uri())
    wanted = [engine.data_path(SPEC, root), engine.data_path("jobs:/srv/files", root)]
    return top, jobs, store, wanted, engine.files_backup(store, wanted, log=print)


def test_a_corrupted_second_archive_leaves_the_first_data_path_as_it_was(tmp_path: Path) -> None:
    """The first data path's archive is staged inside it before the second's is found
    corrupted: the staging folder goes, the refusal is the corruption's."""
    top, jobs, store, wanted, made = _two_data_paths(tmp_path)
    [second] = [f for f in made.manifest["files"] if f["component"] == "jobs"]
    _flip_a_byte(tmp_path / "store" / second["key"])
    damage(top)
    damaged = snapshot(top), snapshot(jobs)

    with pytest.raises(engine.BackupError) as refused:
        engine.restore_files(store, wanted, made.id, safety_backup=False, log=print)
    assert str(refused.value).startswith(
        f"backup {made.id}: the archive of jobs:/srv/files is corrupted: "
    )
    assert (snapshot(top), snapshot(jobs)) == damaged


def test_a_restore_stops_at_a_data_path_not_mounted_and_changes_none(tmp_path: Path) -> None:
    """Two data paths, the second not mounted when the restore runs (without the safety
    backup, which would refuse first): the first is staged, then put back as it was."""
    top, jobs, store, wanted, made = _two_data_paths(tmp_path)
    damage(top)
    damaged = snapshot(top)
    (jobs / "report.csv").unlink()
    jobs.rmdir()

    with pytest.raises(engine.BackupError) as refused:
        engine.restore_files(store, wanted, made.id, safety_backup=False, log=print)
    assert str(refused.value) == f"jobs:/srv/files is not mounted at {jobs}"
    assert snapshot(top) == damaged
    assert not jobs.exists()


@pytest.mark.parametrize(
    ("failing", "restored"), [(0, "none"), (2, "api:/app/uploads, jobs:/srv/files")]
)
def test_a_swap_failing_midway_names_the_data_paths_restored_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int, restored: str
) -> None:
    """Three data paths; the disk fails one's first move (the one injected fault): those
    before it stay restored and are named, it and those after it are as they were, and no
    staging folder is left in any of them."""
    root = tmp_path / "data"
    specs = [SPEC, "jobs:/srv/files", "web:/srv/files"]
    folders = [make_tree(root), root / "jobs" / "srv" / "files", root / "web" / "srv" / "files"]
    for folder in folders[1:]:
        folder.mkdir(parents=True)
        (folder / "report.csv").write_text("a,b\n")
    store = backup.from_url((tmp_path / "store").as_uri())
    wanted = [engine.data_path(spec, root) for spec in specs]
    made = engine.files_backup(store, wanted, log=print)
    backed_up = [snapshot(folder) for folder in folders]
    damage(folders[0])
    for folder in folders[1:]:
        (folder / "report.csv").write_text("changed since\n")
    changed = [snapshot(folder) for folder in folders]
    renamed = Path.rename

    def flaky(self: Path, target: Any) -> Path:
        if self.parent == folders[failing]:
            raise OSError(errno.EIO, "Input/output error")
        return renamed(self, target)

    monkeypatch.setattr(Path, "rename", flaky)
    said: list[str] = []
    with pytest.raises(engine.BackupError) as failed:
        engine.restore_files(store, wanted, made.id, safety_backup=False, log=said.append)
    monkeypatch.undo()
    # Each restored before it said so, its old content deleted (root may delete it all).
    assert [line for line in said if "now holds" in line or "old content" in line] == [
        f"{spec}: now holds backup {made.id}" for spec in specs[:failing]
    ]
    assert str(failed.value) == (
        f"replacing the content of {specs[failing]} failed ([Errno 5] Input/output error); it "
        f"is as it was; the data paths after it are as they were (restored before it: "
        f"{restored})"
    )
    assert [snapshot(f) for f in folders] == backed_up[:failing] + changed[failing:]
    assert not [p for f in folders for p in f.iterdir() if p.name.startswith(".shipyard")]


def test_a_file_written_during_the_backup_is_archived_and_said(tmp_path: Path) -> None:
    """The app appends to a log while the backup reads it: tar exits 1 ("file changed as we
    read it"), the archive is whole, and the backup is taken with tar's words in its log."""
    root = tmp_path / "data"
    top = make_tree(root)
    growing = top / "app.log"
    chunk = os.urandom(1 << 16)
    growing.write_bytes(chunk * 800)  # 50 MB: tar is still reading it while it grows
    stop = threading.Event()

    def append() -> None:
        with growing.open("ab") as out:
            while not stop.is_set():
                out.write(chunk)
                out.flush()

    writer = threading.Thread(target=append)
    writer.start()
    store = backup.from_url((tmp_path / "store").as_uri())
    said: list[str] = []
    try:
        made = engine.files_backup(store, [engine.data_path(SPEC, root)], log=said.append)
    finally:
        stop.set()
        writer.join()

    (changed,) = [line for line in said if "files changed while archived" in line]
    assert changed.startswith(f"{SPEC}: files changed while archived: "), said
    assert "app.log: file changed as we read it" in changed, changed
    assert [b.id for b in backup.list_backups(store)] == [made.id]
    assert engine.verify(store, made.id, log=print).manifest["files"][0]["entries"] == len(
        snapshot(top)
    )


# The backup image's USER: compose.backup.yaml's files-restore runs the engine as this uid.
ENGINE_UID = 1000
# tar names itself by the path it was started by in its messages.
TAR = shutil.which("tar")


@pytest.fixture
def users_tree() -> Iterator[Path]:
    """make_tree's data under `data/` and an empty `store/`, in a folder the backup image's user
    may enter (pytest's own are 0700), all owned by that user as the app's volume is; the
    folder's path. Removed after."""
    shared = Path(tempfile.mkdtemp(prefix="shipyard-as-user-"))
    try:
        shared.chmod(0o755)
        make_tree(shared / "data")
        (shared / "store").mkdir()
        for path in [shared, *shared.rglob("*")]:
            os.lchown(path, ENGINE_UID, ENGINE_UID)
        yield shared
    finally:
        shutil.rmtree(shared)


def _backed_up(
    users_tree: Path, wanted: list[data_files.DataPath]
) -> tuple[backup.Storage, engine.Backup]:
    """A files backup of `wanted` into users_tree's store, owned by the engine's user as the
    backup image writes it; the store and the backup."""
    store = backup.from_url((users_tree / "store").as_uri())
    made = engine.files_backup(store, wanted, log=print)
    for path in (users_tree / "store").rglob("*"):
        os.lchown(path, ENGINE_UID, ENGINE_UID)
    return store, made


def _restored_as_engine(
    store: backup.Storage, wanted: list[data_files.DataPath], backup_id: str
) -> int:
    """`restore --files` of the backup as the backup image's user; its exit code."""
    return _as_user(
        ENGINE_UID,
        lambda: engine.restore_files(store, wanted, backup_id, safety_backup=False, log=print),
    )


def test_a_restore_as_the_engines_user_brings_back_every_mode(users_tree: Path) -> None:
    """As root, tar keeps the archived modes anyway; as the backup image's user (uid 1000, the
    umask 022 of a container) only --preserve-permissions keeps the group's write bit and the
    setgid folder."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    before = snapshot(top)
    store, made = _backed_up(users_tree, wanted)

    damage(top)
    engine.restore_files(store, wanted, made.id, safety_backup=False, log=print)
    assert snapshot(top) == before
    damage(top)
    restored = _restored_as_engine(store, wanted, made.id)
    assert restored == 0
    assert snapshot(top) == before


def _freeze(top: Path) -> None:
    """Read-only folders, as an app may keep: one with a file and a read-only folder in it,
    and the data path itself."""
    frozen = top / "frozen"
    (frozen / "deeper").mkdir(parents=True)
    (frozen / "kept.txt").write_text("read-only folder\n")
    (frozen / "deeper" / "kept.bin").write_bytes(os.urandom(1000))
    for path in (frozen, *frozen.rglob("*")):
        os.lchown(path, ENGINE_UID, ENGINE_UID)
    # Searchable and writable by its owner, not readable: listing it needs the read bit.
    (frozen / "blind").mkdir()
    (frozen / "blind" / "kept.txt").write_text("in a folder its owner cannot list\n")
    for path in (frozen, *frozen.rglob("*")):
        os.lchown(path, ENGINE_UID, ENGINE_UID)
    (frozen / "blind").chmod(0o300)
    (frozen / "deeper").chmod(0o500)
    frozen.chmod(0o555)
    top.chmod(0o550)


def test_a_restore_as_the_engines_user_moves_read_only_folders(users_tree: Path) -> None:
    """As any user but root, a folder without write permission cannot move to another folder
    (its `..` changes), nor can what it holds be deleted: the swap lends each its owner's write
    bit and gives the mode back. (It failed half-way, the data path's content split between
    itself and the folder set aside.)"""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    _freeze(top)
    before = snapshot(top)
    store, made = _backed_up(users_tree, wanted)

    top.chmod(0o770)
    damage(top)
    top.chmod(0o550)
    restored = _restored_as_engine(store, wanted, made.id)
    assert restored == 0
    assert snapshot(top) == before, "no .shipyard-* folder left, every mode as archived"


def test_old_content_in_a_folder_of_roots_stays_aside_and_a_linked_folder_keeps_its_mode(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Deeper in the old content (in a folder the engine's user owns, so it moves), a folder of
    root's it may not open, and a link to its own folder outside without the write bit: the
    restore succeeds, root's folder stays aside and is said, and the folder behind the link
    keeps its mode (the removal opens folders, never through a link)."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    before = snapshot(top)
    store, made = _backed_up(users_tree, wanted)
    damage(top)
    old = top / "old"
    (old / "roots").mkdir(parents=True)
    (old / "roots" / "roots.txt").write_text("root's\n")
    outside = users_tree / "outside"
    outside.mkdir()
    (old / "link").symlink_to(outside)
    for path in (old, outside, old / "link"):
        os.lchown(path, ENGINE_UID, ENGINE_UID)
    outside.chmod(0o500)
    capfd.readouterr()

    assert _restored_as_engine(store, wanted, made.id) == 0
    (aside,) = top.glob(f"{data_files.ASIDE}*")
    left = sorted(p.relative_to(aside).as_posix() for p in aside.rglob("*"))
    assert left == ["old", "old/roots", "old/roots/roots.txt"]
    assert (
        f"{SPEC}: its old content stays in {aside.name} (uid {ENGINE_UID}" in capfd.readouterr().out
    )
    assert stat.S_IMODE(outside.stat().st_mode) == 0o500
    shutil.rmtree(aside)
    assert snapshot(top) == before


def test_a_restore_as_the_engines_user_refuses_what_it_cannot_move_and_changes_nothing(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A folder of another user without write permission can neither move as the engine's
    user nor be lent the bit: in the data path (a link to one moves as a link), or the data
    path itself. The restore refuses before it changes anything, naming them and the fix."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    store, made = _backed_up(users_tree, wanted)
    damage(top)
    for name in ("b-roots", "a-roots"):
        (top / name).mkdir(mode=0o555)  # root's, as the test runs
    (top / "own").mkdir(mode=0o555)
    os.lchown(top / "own", ENGINE_UID, ENGINE_UID)  # its own: lent the bit, so movable
    (top / "link").symlink_to("a-roots")
    before = snapshot(top)
    capfd.readouterr()

    assert _restored_as_engine(store, wanted, made.id) == 1
    assert (
        f"BackupError: {SPEC}: cannot move a-roots, b-roots, a folder without write permission"
        f" that uid {ENGINE_UID} does not own; {data_files.FIX}\n"
    ) in capfd.readouterr().err
    assert snapshot(top) == before

    (top / "link").unlink()
    for name in ("a-roots", "b-roots"):
        (top / name).rmdir()
    os.lchown(top, 0, 0)
    top.chmod(0o755)
    before = snapshot(top)
    assert _restored_as_engine(store, wanted, made.id) == 1
    assert (
        f"BackupError: {SPEC}: uid {ENGINE_UID} may not write in {top}, nor lend it the"
        f" permission (another user owns it); {data_files.FIX}\n"
    ) in capfd.readouterr().err
    assert snapshot(top) == before


def test_a_data_path_the_engines_user_may_write_but_not_chmod_keeps_its_mode_and_says_so(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A data path of another user that the engine's user may write to through its group (a
    Kubernetes claim's root: root's, group fsGroup 1000, setgid): the content is restored, the
    folder's mode stays, as only its owner may change it, and the log says so."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    before = snapshot(top)
    store, made = _backed_up(users_tree, wanted)
    damage(top)
    os.lchown(top, 0, ENGINE_UID)
    top.chmod(0o2775)
    capfd.readouterr()

    assert _restored_as_engine(store, wanted, made.id) == 0
    assert (
        f"{SPEC}: the folder keeps mode 2775, not the archived 770 (Operation not permitted:"
        f" uid {ENGINE_UID} does not own it)\n"
    ) in capfd.readouterr().out
    after = snapshot(top)
    assert after.pop(".") == ("dir", 0o2775, 0, ENGINE_UID, None)
    assert before.pop(".") == ("dir", 0o770, ENGINE_UID, ENGINE_UID, None)
    assert after == before


def test_old_content_the_engines_user_may_not_delete_stays_aside_and_is_said(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A folder every user may write to but only owners delete from (root's, sticky, as /tmp):
    the engine's user moves it aside with the old content but cannot delete root's file in
    it. The restore still succeeds, and says where the old content stays and what to do."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    before = snapshot(top)
    store, made = _backed_up(users_tree, wanted)
    damage(top)
    (top / "shared").mkdir()
    (top / "shared").chmod(0o1777)
    (top / "shared" / "roots.txt").write_text("root's\n")
    capfd.readouterr()

    assert _restored_as_engine(store, wanted, made.id) == 0
    (aside,) = top.glob(f"{data_files.ASIDE}*")
    assert [p.name for p in aside.rglob("*")] == ["shared", "roots.txt"]
    assert (
        f"{SPEC}: its old content stays in {aside.name} (uid {ENGINE_UID} may not delete all "
        "of it; never archived): remove it as the files' owner"
    ) in capfd.readouterr().out
    shutil.rmtree(aside)
    assert snapshot(top) == before


def _swap_failing_at(
    top: Path, failing: set[int], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[str]]:
    """Swap `top`'s content for a staged file with the renames numbered in `failing` (from 1)
    failing as a disk does (the filesystem's fault, not ours: the one injected): the
    engine's sentence and the names renamed, in order."""
    staging = top / f"{data_files.STAGING}x"
    staging.mkdir()
    (staging / "new.txt").write_text("restored\n")
    renamed = Path.rename
    calls: list[str] = []

    def flaky(self: Path, target: Any) -> Path:
        calls.append(self.name)
        if len(calls) in failing:
            raise OSError(errno.EIO, "Input/output error")
        return renamed(self, target)

    monkeypatch.setattr(Path, "rename", flaky)
    with pytest.raises(engine.BackupError) as failed:
        data_files._swap(data_files.DataPath("api", "/app/uploads", top), staging)
    monkeypatch.undo()
    return str(failed.value), calls


def test_a_move_that_fails_mid_swap_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fourth move fails: every entry moved before it goes back, the old content whole."""
    top = make_tree(tmp_path)
    before = snapshot(top)
    failed, calls = _swap_failing_at(top, {4}, monkeypatch)
    assert failed == (
        "replacing the content of api:/app/uploads failed ([Errno 5] Input/output error); it "
        "is as it was"
    )
    assert len(calls) == 4 + 3, "the three moves done were undone by renames too"
    assert {k: v for k, v in snapshot(top).items() if data_files.STAGING not in k} == before
    assert not list(top.glob(f"{data_files.ASIDE}*"))


def test_a_move_that_cannot_be_undone_is_named_with_where_the_old_content_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The undo fails too (the fourth move and the first move back): the undo goes on past it,
    and the sentence names what stayed aside and where, instead of saying nothing changed."""
    top = make_tree(tmp_path)
    failed, calls = _swap_failing_at(top, {4, 5}, monkeypatch)
    (aside,) = top.glob(f"{data_files.ASIDE}*")
    stuck = calls[2]  # the third entry moved aside, the first one moved back
    assert failed == (
        "replacing the content of api:/app/uploads failed ([Errno 5] Input/output error); "
        f"{stuck} could not be put back: find the old content in {aside.name}"
    )
    assert [p.name for p in aside.iterdir()] == [stuck]
    assert len(calls) == 4 + 3, "the two other moves were undone past the failed one"


def test_every_entry_that_cannot_be_put_back_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fourth move fails, and the first two moves back: both entries are named."""
    top = make_tree(tmp_path)
    failed, calls = _swap_failing_at(top, {4, 5, 6}, monkeypatch)
    (aside,) = top.glob(f"{data_files.ASIDE}*")
    assert failed.endswith(
        f"{calls[4]}, {calls[5]} could not be put back: find the old content in {aside.name}"
    )
    assert sorted(p.name for p in aside.iterdir()) == sorted([calls[4], calls[5]])


def test_a_read_only_folder_whose_move_fails_keeps_its_mode(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """As the engine's user, the move of a read-only folder (lent its write bit for the move)
    fails: the folder gets its own mode back, any move before it is undone, and the
    sentence names the filesystem's error."""
    top = users_tree / "data" / "api" / "app" / "uploads"
    _freeze(top)
    top.chmod(0o770)
    staging = top / f"{data_files.STAGING}x"
    staging.mkdir()
    (staging / "new.txt").write_text("restored\n")
    for path in (staging, staging / "new.txt"):
        os.lchown(path, ENGINE_UID, ENGINE_UID)
    before = snapshot(top)
    said = users_tree / "said"

    def swap() -> None:
        renamed = Path.rename

        def failing(self: Path, target: Any) -> Path:
            if self.name == "frozen":
                raise OSError(errno.EIO, "Input/output error")
            return renamed(self, target)

        Path.rename = failing  # type: ignore[assignment,method-assign]  # in the child only
        try:
            data_files._swap(data_files.DataPath("api", "/app/uploads", top), staging)
        except engine.BackupError as exc:
            said.write_text(str(exc))

    assert _as_user(ENGINE_UID, swap) == 0, capfd.readouterr().err
    assert said.read_text() == (
        "replacing the content of api:/app/uploads failed ([Errno 5] Input/output error); it "
        "is as it was"
    )
    assert snapshot(top) == before, "frozen is 0555 again, every entry back in place"


def test_a_data_path_the_engines_user_may_not_write_in_is_refused_first(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Root's data path without group or other write: the engine's user may neither write in
    it nor lend it the permission. Refused before anything is downloaded or moved."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    store, made = _backed_up(users_tree, wanted)
    damage(top)
    os.chown(top, 0, 0)
    top.chmod(0o755)
    before = snapshot(top)
    capfd.readouterr()

    assert _restored_as_engine(store, wanted, made.id) == 1
    assert snapshot(top) == before
    assert (
        f"{SPEC}: uid {ENGINE_UID} may not write in {top}, nor lend it the permission (another "
        "user owns it); make it writable by its owner (chmod u+w), or restore as root; nothing "
        "was changed"
    ) in capfd.readouterr().err


def test_a_data_path_another_user_owns_keeps_its_mode_and_says_so(
    users_tree: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A Kubernetes claim's root belongs to root, writable by the pods' fsGroup (1000). The
    engine's user restores into it, but only the owner may change its mode: the content is
    restored, the mode it has stays and the log says so (chmod failed the restore after the
    content was replaced)."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    top = wanted[0].source
    os.chown(top, 0, ENGINE_UID)
    top.chmod(0o2775)
    store, made = _backed_up(users_tree, wanted)
    before = snapshot(top)
    damage(top)
    top.chmod(0o2777)
    capfd.readouterr()

    restored = _restored_as_engine(store, wanted, made.id)
    assert restored == 0, capfd.readouterr().err
    assert snapshot(top) == {**before, ".": ("dir", 0o2777, 0, ENGINE_UID, None)}
    assert (
        f"{SPEC}: the folder keeps mode 2777, not the archived 2775 (Operation not permitted: "
        f"uid {ENGINE_UID} does not own it)"
    ) in capfd.readouterr().out

    # The same mode as archived: nothing to change, nothing said.
    top.chmod(0o2775)
    damage(top)
    restored = _restored_as_engine(store, wanted, made.id)
    assert restored == 0
    assert snapshot(top) == before
    assert "keeps mode" not in capfd.readouterr().out


def test_a_file_the_engines_user_cannot_read_fails_the_backup_in_tars_words(
    users_tree: Path,
) -> None:
    """Root left a file only root may read in the app's volume: as root the backup takes it;
    as the backup image's user, tar cannot open it (exit 2), and that backup fails saying so,
    with nothing listed."""
    wanted = [engine.data_path(SPEC, users_tree / "data")]
    (wanted[0].source / "root-only.db").write_bytes(b"written by root")
    (wanted[0].source / "root-only.db").chmod(0o600)
    store = backup.from_url((users_tree / "store").as_uri())
    taken = engine.files_backup(store, wanted, log=print)
    said = users_tree / "said"

    def back_up() -> None:
        try:
            engine.files_backup(store, wanted, log=print)
        except engine.BackupError as exc:
            said.write_text(str(exc))

    assert _as_user(ENGINE_UID, back_up) == 0
    assert said.read_text() == (
        f"archiving {SPEC} failed: tar exited 2: {TAR}: ./root-only.db: Cannot open: Permission"
        f" denied\n{TAR}: Exiting with failure status due to previous errors"
    )
    assert [b.id for b in backup.list_backups(store)] == [taken.id]


@pytest.mark.parametrize("fault", ["zstd killed", "upload refused", "upload never started"])
def test_a_files_backup_cut_off_midway_stops_its_archivers_and_lists_nothing(
    fault: str, bucket: str, tmp_path: Path
) -> None:
    """Mid-upload, zstd dies (out of memory, killed) or S3 refuses a part, or S3 refuses the
    upload itself after boto3 read its first part: the backup fails naming the cause, tar and
    zstd are stopped, not left blocked on a pipe nobody reads any more, and no object or
    multipart upload is left."""
    root = tmp_path / "data"
    top = make_tree(root)
    # Incompressible, and more than the 10 parts of 5 MiB boto3 reads ahead of its uploads:
    # tar and zstd are still running, blocked on the pipe, when the first part is sent.
    (top / "big.bin").write_bytes(os.urandom(60 << 20))
    store = backup.S3Storage(bucket, "prod", part_size=5 * 1024 * 1024)
    call = "CreateMultipartUpload" if fault == "upload never started" else "UploadPart"

    def cut_off(**_kwargs: Any) -> None:
        if fault == "zstd killed":
            for zstd in children(os.getpid(), "zstd"):
                os.kill(zstd, signal.SIGKILL)
        else:
            error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
            raise ClientError(error, call)  # type: ignore[arg-type]

    store.client.meta.events.register(f"before-call.s3.{call}", cut_off)
    failed: list[Exception] = []

    def back_up() -> None:
        try:
            engine.files_backup(store, [engine.data_path(SPEC, root)], log=print)
        except (engine.BackupError, backup.StorageError) as exc:
            failed.append(exc)

    # In a thread: archivers left blocked would hang the test run instead of failing it.
    running = threading.Thread(target=back_up, daemon=True)
    running.start()
    running.join(120)
    assert not running.is_alive(), "the backup never ended: tar or zstd left running"
    (error,) = failed
    if fault == "zstd killed":
        assert str(error) == f"archiving {SPEC} failed: zstd was killed by SIGKILL"
    else:
        assert str(error).startswith(f"cannot upload to {store.url}/")
        assert str(error).endswith(": SlowDown Please reduce your request rate.")
    assert not children(os.getpid(), "zstd")
    assert not children(os.getpid(), "tar")
    s3 = boto3.client("s3")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_local_backup_whose_disk_fills_stops_its_archivers(tmp_path: Path) -> None:
    """The backup's disk fills mid-archive (a file size limit here: EFBIG, as a full disk's
    ENOSPC): the write fails, nothing reads tar's and zstd's pipe any more, and both must be
    stopped, else they block on it for good and the backup never ends. In a forked child,
    which alone carries the limit."""
    root = tmp_path / "data"
    top = make_tree(root)
    (top / "big.bin").write_bytes(os.urandom(16 << 20))
    store = backup.LocalStorage(tmp_path / "store")
    said, told = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            keep_hits = forked_hits()
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
            engine.files_backup(store, [engine.data_path(SPEC, root)], log=lambda _line: None)
        except backup.StorageError as exc:
            os.write(told, str(exc).encode())
            code = 0
            keep_hits()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)  # never back into pytest, whatever failed
    os.close(told)
    deadline = time.monotonic() + 120
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            for child in [*children(pid, "tar"), *children(pid, "zstd"), pid]:
                os.kill(child, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the backup never ended: tar or zstd left blocked on their pipe")
        time.sleep(0.1)
    with os.fdopen(said) as message:
        assert message.read().endswith(": File too large")
    assert backup.list_backups(store) == []
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    # Without the limit the same backup completes.
    made = engine.files_backup(store, [engine.data_path(SPEC, root)], log=lambda _line: None)
    assert [b.id for b in backup.list_backups(store)] == [made.id]


def _as_user(uid: int, work: Callable[[], object]) -> int:
    """Run `work` in a forked child as `uid` (its group too, no others) with umask 022; its exit
    code: 0 when `work` returned."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            keep_hits = forked_hits()
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.umask(0o022)
            work()
            code = 0
            keep_hits()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)  # never back into pytest, whatever failed
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_data_path_that_is_not_there_leaves_no_backup_listed(
    database: str, tmp_path: Path
) -> None:
    store = backup.from_url((tmp_path / "store").as_uri())
    result = shipyard_cli(
        "backup",
        "run",
        "--target",
        store.url,
        "--data-path",
        "api:/app/uploads",
        "--data-root",
        str(tmp_path / "nothing-mounted"),
        env={},
    )
    assert result.returncode == 1
    assert (
        f"api:/app/uploads is not mounted at {tmp_path}/nothing-mounted/api/app/uploads: the"
        " backup service mounts each data path (compose.backup.yaml); re-render the kit after"
        " adding one"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert backup.list_backups(store) == []


@pytest.mark.parametrize("spec", ["api", "api:relative", "api:/app/../etc", ":/app"])
def test_a_bad_data_path_argument_is_one_sentence(spec: str, tmp_path: Path) -> None:
    result = shipyard_cli(
        "backup", "run", "--target", (tmp_path / "s").as_uri(), "--data-path", spec, env={}
    )
    assert result.returncode == 1
    assert "give COMPONENT:/absolute/path, e.g. api:/app/uploads" in result.stderr


def test_a_data_path_is_split_at_its_components_colon() -> None:
    """A component's name holds no colon; a path may."""
    data = engine.data_path("api:/srv/a:b", Path("/data"))
    assert (data.component, data.path, data.source) == (
        "api",
        "/srv/a:b",
        Path("/data/api/srv/a:b"),
    )


def test_prune_keeps_every_archive_of_a_backup_it_keeps(database: str, tmp_path: Path) -> None:
    """An archive's key has folders of its own (ID/files/api/app/uploads.tar.zst): retention
    reads the backup id from the key's first part only, so a kept backup older than a day loses
    nothing (read from its last folder, the archive looked like a stale crashed leftover)."""
    root = tmp_path / "data"
    make_tree(root)
    store = backup.LocalStorage(tmp_path / "store")
    made = engine.backup(store, files=[engine.data_path(SPEC, root)], log=print)
    old_id = "20200101T000000Z-0000dd"
    # The same backup, as if taken years ago: its folder and every key its manifest names.
    (tmp_path / "store" / made.id).rename(tmp_path / "store" / old_id)
    manifest = tmp_path / "store" / old_id / engine.MANIFEST
    manifest.write_text(manifest.read_text().replace(made.id, old_id))
    kept = sorted(store.list_keys())
    assert f"{old_id}/files/api/app/uploads.tar.zst" in kept

    assert backup.prune(store, backup.Retention(daily=1), log=print) == []
    assert sorted(store.list_keys()) == kept
    assert engine.verify(store, old_id, log=print).verified is not None


def test_restoring_files_without_naming_a_data_path_is_one_sentence(tmp_path: Path) -> None:
    """`restore --files` with no --data-path: nothing to restore is said, before any backup is
    read or any safety backup taken."""
    said = "name the data paths to restore (--data-path COMPONENT:/PATH)"
    with pytest.raises(engine.BackupError) as refused:
        engine.restore_files(backup.LocalStorage(tmp_path), [], log=print)
    assert str(refused.value) == said
    result = shipyard_cli(
        "backup", "restore", "--files", "--yes", "--target", tmp_path.as_uri(), env={}
    )
    assert result.returncode == 1
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_restore_files_brings_back_the_backup_it_is_asked_for(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older backup named by id is restored, not the newest; the safety backup is taken
    (and said) only when asked; a backup that holds none of the asked data paths, or not all,
    is refused naming each, and nothing changes."""
    root = tmp_path / "data"
    top = make_tree(root)
    wanted = [engine.data_path(SPEC, root)]
    store = backup.LocalStorage(tmp_path / "store")
    plain = engine.backup(store, log=print)  # the database only
    first = engine.backup(store, files=wanted, log=print)
    before = snapshot(top)
    damage(top)
    engine.backup(store, files=wanted, log=print)  # newer: holds the damaged tree

    said: list[str] = []
    assert engine.restore_files(store, wanted, first.id, safety_backup=False, log=print) is None
    assert snapshot(top) == before
    (top / "run.sh").chmod(0o777)
    safety = engine.restore_files(store, wanted, first.id, log=said.append)
    assert said[0] == (
        "taking a safety backup of the database and the data paths before replacing them"
    )
    assert safety is not None
    assert safety.manifest["kind"] == "safety"
    # The safety backup reports through the caller's log too, not behind its back on stderr.
    assert f"backup {safety.id} complete" in " ".join(said)
    assert snapshot(top) == before
    said.clear()
    assert engine.verify(store, first.id, log=said.append).verified["files"] == 1  # type: ignore[index]
    assert f"{SPEC}: sha256 and {len(before)} entries match" in said
    assert capsys.readouterr().err == ""

    with pytest.raises(engine.BackupError) as refused:
        engine.restore_files(store, wanted, plain.id, log=print)
    assert str(refused.value) == (
        f"backup {plain.id} holds no files of {SPEC}; nothing was changed"
    )
    others = [engine.data_path("jobs:/srv/x", root), *wanted, engine.data_path("web:/y", root)]
    with pytest.raises(engine.BackupError) as refused:
        engine.restore_files(store, others, first.id, log=print)
    assert str(refused.value) == (
        f"backup {first.id} holds no files of jobs:/srv/x, web:/y; nothing was changed"
    )
    assert snapshot(top) == before


# --- files only: the data paths where CloudNativePG backs the database up ------------------

# libpq pointed nowhere: a files-only backup, its drill and its files restore never connect.
NO_DATABASE = {
    "PGHOST": "/nonexistent/postgresql",
    "PGPORT": "1",
    "PGDATABASE": "nothing",
    "PGUSER": "nobody",
    "PGCONNECT_TIMEOUT": "2",
}


def files_only(target: str, root: Path, *more: str) -> str:
    """`shipyard backup run --files-only` as the CNPG kit's CronJob runs it; the backup's id."""
    started = time.monotonic()
    made = shipyard_cli(
        "backup", "run", "--files-only", "--target", target, "--data-path", SPEC,
        "--data-root", str(root), *more, env=NO_DATABASE,
    )  # fmt: skip
    took = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    assert "(files only, no database)" in made.stderr
    made_id = made.stderr.split("backup ")[-1].split(" ")[0]
    store = backup.from_url(target)
    assert made.stderr.splitlines()[0] == (
        f"shipyard backup: backing up 1 data path(s), no database, to {store.url}/{made_id}"
    )
    # Its own time, in the manifest: some of the time the command took.
    manifest = json.loads(store.get_bytes(f"{made_id}/{engine.MANIFEST}"))
    assert 0 < manifest["duration_seconds"] <= took
    return made_id


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_files_only_round_trip_needs_no_database(
    where: str, tmp_path: Path, request: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """`run --files-only`, `list`, `verify`, damage, `restore --files`, with no PostgreSQL
    reachable: the tree is back exactly, the manifest says it holds no database, and the
    safety backup (files only too) holds the damaged tree."""
    target = _target(where, tmp_path, request, "prod/files")
    root = tmp_path / "data"
    top = make_tree(root)
    before = snapshot(top)
    data = ["--data-path", SPEC, "--data-root", str(root)]

    made_id = files_only(target, root, "--retention-days", "7")
    store = backup.from_url(target)
    (taken,) = backup.list_backups(store)
    assert taken.id == made_id
    assert taken.files_only
    assert taken.manifest["files_only"] is True
    assert not {"dump", "database", "tables", "database_settings"} & set(taken.manifest)
    assert config.schema_errors(taken.manifest, "backup-manifest") == []
    (entry,) = taken.manifest["files"]
    assert entry["entries"] == len(before)
    assert sorted(store.list_keys()) == [entry["key"], f"{taken.id}/{engine.MANIFEST}"]
    assert taken.size == entry["size"]

    listed = shipyard_cli("backup", "list", "--target", target, env=NO_DATABASE)
    assert listed.returncode == 0, listed.stderr
    (row,) = listed.stdout.splitlines()[1:]
    assert row.split()[:3] == [taken.id, "scheduled", "(files"]
    assert "(files only)" in row

    started = time.monotonic()
    checked = shipyard_cli("backup", "verify", "--target", target, env=NO_DATABASE)
    took = time.monotonic() - started
    assert checked.returncode == 0, checked.stderr
    assert f"{SPEC}: sha256 and {len(before)} entries match" in checked.stderr
    said = checked.stderr.splitlines()
    assert (
        f"shipyard backup: backup {taken.id} verified (files only, no database): 1 archive(s) match"
    ) in said
    assert any(
        re.fullmatch(
            r"shipyard backup: restore drill: archives read in [0-9.]+ s; the backup is \d+ s"
            r" old \(recovery point\)",
            line,
        )
        for line in said
    ), said
    record = backup.list_backups(store)[0].verified
    assert record is not None
    assert record["files"] == 1
    assert "tables" not in record
    assert 0 <= record["restore_seconds"] <= took

    damage(top)
    damaged = snapshot(top)
    back = shipyard_cli(
        "backup", "restore", "--files", "--yes", "--target", target, *data, env=NO_DATABASE
    )
    assert back.returncode == 0, back.stderr
    assert back.stderr.splitlines()[0] == (
        "shipyard backup: taking a safety backup of the data paths (files only) before"
        " replacing them"
    )
    assert snapshot(top) == before
    assert not [p for p in top.iterdir() if p.name.startswith(".shipyard-")]
    safety = backup.list_backups(store)[-1]
    assert safety.manifest["kind"] == "safety"
    assert safety.files_only
    engine.restore_files(
        store, [engine.data_path(SPEC, root)], safety.id, safety_backup=False, log=print
    )
    assert snapshot(top) == damaged
    # Through the engine, the safety backup reports through the caller's log, not stderr.
    capfd.readouterr()
    logged: list[str] = []
    engine.restore_files(store, [engine.data_path(SPEC, root)], taken.id, log=logged.append)
    assert snapshot(top) == before
    assert capfd.readouterr().err == ""
    assert logged[1].startswith("backing up 1 data path(s), no database, to ")


def test_restoring_the_database_from_a_files_only_backup_is_refused(tmp_path: Path) -> None:
    """One sentence, before any connection (libpq points nowhere, and that is not what it
    says), no safety backup, the storage and the files as they were."""
    root = tmp_path / "data"
    top = make_tree(root)
    target = (tmp_path / "store").as_uri()
    made_id = files_only(target, root)
    store = backup.from_url(target)
    keys = sorted(store.list_keys())
    before = snapshot(top)
    said = (
        f"backup {made_id} holds only files, no database (CloudNativePG backs the database up):"
        " restore its files with `restore --files`; nothing was changed"
    )

    result = shipyard_cli("backup", "restore", "--yes", "--target", target, env=NO_DATABASE)
    assert result.returncode == 1
    assert result.stderr.strip() == f"shipyard backup: {said}"
    with pytest.raises(engine.BackupError) as refused:
        engine.restore(store, made_id, log=print)
    assert str(refused.value) == said
    assert sorted(store.list_keys()) == keys
    assert snapshot(top) == before


def test_a_corrupted_files_only_archive_fails_verify_and_restores_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    top = make_tree(root)
    target = (tmp_path / "store").as_uri()
    made_id = files_only(target, root)
    (made,) = backup.list_backups(backup.from_url(target))
    _flip_a_byte(tmp_path / "store" / made.manifest["files"][0]["key"])
    damage(top)
    damaged = snapshot(top)

    checked = shipyard_cli("backup", "verify", "--target", target, env=NO_DATABASE)
    assert checked.returncode == 1
    assert f"backup {made_id}: the archive of {SPEC} is corrupted" in checked.stderr
    assert "Traceback" not in checked.stderr
    assert not (tmp_path / "store" / made_id / engine.VERIFIED).exists()
    back = shipyard_cli(
        "backup", "restore", "--files", "--yes", "--target", target, "--data-path", SPEC,
        "--data-root", str(root), env=NO_DATABASE,
    )  # fmt: skip
    assert back.returncode == 1
    assert "is corrupted" in back.stderr
    assert snapshot(top) == damaged


def test_an_archive_holding_other_entries_than_its_manifest_says_fails_verify(
    tmp_path: Path,
) -> None:
    """The archive's sha256 matches (it is the one written), but the manifest counts another
    number of entries: verify lists the archive and says both numbers."""
    root = tmp_path / "data"
    make_tree(root)
    target = (tmp_path / "store").as_uri()
    made_id = files_only(target, root)
    path = tmp_path / "store" / made_id / engine.MANIFEST
    manifest = json.loads(path.read_text())
    listed = manifest["files"][0]["entries"]
    manifest["files"][0]["entries"] = listed + 1
    path.write_text(json.dumps(manifest))

    checked = shipyard_cli("backup", "verify", "--target", target, env=NO_DATABASE)
    assert checked.returncode == 1
    assert checked.stderr.splitlines()[-1] == (
        f"shipyard backup: backup {made_id}: the archive of {SPEC} holds {listed} entries, the"
        f" manifest says {listed + 1}"
    )
    assert not (tmp_path / "store" / made_id / engine.VERIFIED).exists()


def test_a_files_only_backup_without_data_paths_is_one_sentence(tmp_path: Path) -> None:
    target = tmp_path / "store"
    result = shipyard_cli(
        "backup", "run", "--files-only", "--target", target.as_uri(), env=NO_DATABASE
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "shipyard backup: a files-only backup needs the data paths to archive (--data-path "
        "COMPONENT:/PATH)"
    )
    assert not target.exists() or list(target.iterdir()) == []


def test_a_files_only_backup_missing_an_archive_is_not_listed(tmp_path: Path) -> None:
    """Its manifest is the last thing written, but should an archive it lists go, the backup
    is no longer complete: never listed, restored or counted."""
    root = tmp_path / "data"
    make_tree(root)
    store = backup.LocalStorage(tmp_path / "store")
    made = engine.files_backup(store, [engine.data_path(SPEC, root)], log=print)
    assert [b.id for b in backup.list_backups(store)] == [made.id]
    (tmp_path / "store" / made.manifest["files"][0]["key"]).unlink()
    assert backup.list_backups(store) == []


def test_retention_treats_files_only_backups_like_the_others(tmp_path: Path) -> None:
    """An old files-only backup goes whole (every archive), the newest stays."""
    root = tmp_path / "data"
    make_tree(root)
    store = backup.LocalStorage(tmp_path / "store")
    wanted = [engine.data_path(SPEC, root)]
    old = engine.files_backup(store, wanted, log=print)
    manifest = tmp_path / "store" / old.id / engine.MANIFEST
    # Taken two years ago, as far as retention reads it (the manifest's created_at).
    manifest.write_text(
        manifest.read_text().replace(old.manifest["created_at"], "2024-01-01T03:00:00+00:00")
    )
    new = engine.files_backup(store, wanted, kind="scheduled", log=print)

    assert backup.prune(store, backup.Retention(daily=3), log=print) == [old.id]
    assert [b.id for b in backup.list_backups(store)] == [new.id]
    assert not [k for k in store.list_keys() if k.startswith(f"{old.id}/")]


def _target(where: str, tmp_path: Path, request: Any, prefix: str) -> str:
    """A fresh target: a folder, or `prefix` in a fresh bucket of the S3 server."""
    if where == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/{prefix}"
    return (tmp_path / "store").as_uri()


def _flip_a_byte(stored: Path) -> None:
    """Corrupt a stored archive in its middle, as a failing disk would."""
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))
