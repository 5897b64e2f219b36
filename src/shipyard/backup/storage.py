"""Where backups live: a local folder (a mounted volume/PVC) or an S3-compatible bucket.

Both backends stream: a dump is written from a pipe without a full local copy, and it only
becomes visible under its final name once every byte is stored (local: rename of a
`.partial` file; S3: completion of the multipart upload, which is aborted on any failure).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

# S3 parts: 16 MiB keeps memory small and needs 10,000 parts only past 160 GB of compressed dump.
PART_SIZE = 16 * 1024 * 1024
CHUNK = 1024 * 1024
PARTIAL = ".partial"


class StorageError(Exception):
    """The backup storage could not be reached, read or written."""


class NotFound(StorageError):
    """The key read does not exist (where that is an answer, not a fault)."""


class Storage(Protocol):
    """A flat key space (`<backup id>/<file>`) with atomic streaming writes."""

    url: str

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        """Store everything `stream` yields under `key`; visible only if it all arrived."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object atomically."""

    def get_bytes(self, key: str) -> bytes:
        """Read a small object."""

    def open(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """Stream an object's bytes."""

    def list_keys(self) -> list[str]:
        """Every object's key, sorted (a crashed local write shows as `<name>.partial`)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with `prefix`."""


class HashingReader:
    """A child process's output as the file object `put_stream` reads: hashed and counted as it
    goes; at its end `finish()` runs, where a subclass fails the upload if the child failed."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size and size > 0 else CHUNK)
        if data:
            self.sha256.update(data)
            self.size += len(data)
            return data
        self.finish()
        return b""

    def finish(self) -> None:
        """Raise if what wrote the stream failed; called once the stream has ended."""


def download(storage: Storage, key: str, path: Path) -> tuple[int, str]:
    """Copy an object to a local file; its size and sha256, to check against a manifest."""
    digest, size = hashlib.sha256(), 0
    with storage.open(key) as source, path.open("wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


@dataclass
class LocalStorage:
    """Backups in a folder; writes go to `<name>.partial`, fsynced, then renamed."""

    root: Path
    url: str = ""

    def __post_init__(self) -> None:
        # Relative folders are resolved where the user's input is read (config.load, from_url);
        # one reaching here would silently depend on the current directory.
        if not self.root.is_absolute():
            raise StorageError(f"{self.root}: a backup folder must be an absolute path")
        self.url = self.url or self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        path = self._path(key)
        partial = path.with_name(path.name + PARTIAL)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            partial.rename(path)
        except OSError as exc:
            with suppress(OSError):
                partial.unlink()
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
        except BaseException:
            with suppress(OSError):
                partial.unlink()
            raise
        _fsync_dir(path.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        from io import BytesIO

        self.put_stream(key, BytesIO(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            kind = NotFound if isinstance(exc, FileNotFoundError) else StorageError
            raise kind(f"cannot read {self._path(key)}: {exc.strerror}") from None

    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        try:
            handle = self._path(key).open("rb")
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from None
        with handle:
            yield handle

    def list_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix)  # a path ignores the trailing slash of "ID/"
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class S3Storage:
    """Backups under `s3://bucket/prefix`; endpoint from the argument or AWS_ENDPOINT_URL."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    part_size: int = PART_SIZE
    url: str = ""
    client: S3Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.prefix = self.prefix.strip("/")
        self.url = self.url or f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        # boto3 takes a third of a second to import and every `invoke` command imports this
        # module, so only S3 storage pays for it.
        import boto3

        # Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID..., a role); never argv.
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url or None)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        # upload_fileobj streams in parts of `part_size` and aborts the multipart upload when
        # reading or any part fails, so a failure never leaves an object under `key`.
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=2,
        )
        with _s3_errors(f"upload to {self.url}/{key}"):
            self.client.upload_fileobj(stream, self.bucket, self._key(key), Config=config)

    def put_bytes(self, key: str, data: bytes) -> None:
        with _s3_errors(f"upload to {self.url}/{key}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with _s3_errors(f"read {self.url}/{key}"):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))[
                "Body"
            ].read()
        return body

    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        with _s3_errors(f"read {self.url}/{key}"):
            body: Any = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield body
        finally:
            body.close()

    def list_keys(self) -> list[str]:
        found = []
        start = f"{self.prefix}/" if self.prefix else ""
        with _s3_errors(f"list {self.url}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            ):
                found += [obj["Key"][len(start) :] for obj in page.get("Contents", [])]
        return sorted(found)

    def delete_prefix(self, prefix: str) -> None:
        doomed = [k for k in self.list_keys() if k.startswith(prefix)]
        doing = f"remove {self.url}/{prefix}"
        with _s3_errors(doing):
            for i in range(0, len(doomed), DELETE_BATCH):
                batch = doomed[i : i + DELETE_BATCH]
                done = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in batch]}
                )
                # S3 answers 200 and lists in Errors each key it did not delete.
                if refused := done.get("Errors"):
                    first = refused[0]
                    raise StorageError(
                        f"cannot {doing}: {len(refused)} key(s) not deleted, the first"
                        f" {first.get('Key', '?')}: {_said(first)}"
                    )


# The most keys S3's DeleteObjects takes in one request.
DELETE_BATCH = 1000


@contextmanager
def _s3_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        kind = NotFound if error.get("Code") in ("NoSuchKey", "404") else StorageError
        raise kind(f"cannot {doing}: {_said(error)}") from None
    except BotoCoreError as exc:
        raise StorageError(f"cannot {doing}: {exc}") from None


def _said(error: Mapping[str, object]) -> str:
    """S3's words for an error: its code and message, either of which a server may leave out."""
    return f"{error.get('Code', '?')} {error.get('Message', '')}".rstrip()


def from_url(url: str, endpoint_url: str | None = None) -> Storage:
    """`file:///backups`, a plain folder path, or `s3://bucket/prefix`."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{url}: name a bucket, e.g. s3://my-backups/prod")
        return S3Storage(parsed.netloc, unquote(parsed.path), endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{url}: file URLs name a local folder, e.g. file:///backups")
        # `file:backups` names a relative folder: resolved here, where the URL is read.
        return LocalStorage(Path(unquote(parsed.path)).resolve())
    if parsed.scheme == "" and url:
        return LocalStorage(Path(url).resolve())
    raise StorageError(f"{url}: use file:///folder or s3://bucket/prefix")
