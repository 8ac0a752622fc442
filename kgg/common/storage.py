"""One code path for local folders and gs:// prefixes: small reads/writes, listings and tree syncs.

Used by the training job (data cache, results, backups) and by the laptop commands, so it must not
import TensorFlow. Objects are compared by size and MD5 (base64, the format GCS reports) so that
unchanged files are never copied twice.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kgg.common.errors import UserError
from kgg.common.terminal import printable

if TYPE_CHECKING:
    from google.cloud import storage as gcs

GCS_SCHEME = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CREDENTIALS_FIX = "gcloud auth application-default login"


class StorageError(UserError, RuntimeError):
    """A bucket or object cannot be reached: the message names the URL and what to check."""


class UnsafeNameError(UserError, ValueError):
    """An object name that would land outside the folder it is downloaded into."""


class TooLargeError(StorageError):
    """An object or a tree holds more than what reads it will take; the message says how much."""


# What a reader takes of one JSON document from the bucket (status, progress, metrics, the cost
# ledger): the job's and the VM's are kilobytes; more is a bucket writer's, not theirs.
MAX_DOCUMENT_BYTES = 4 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or local file) under a listed prefix; `name` is relative to that prefix."""

    name: str
    size: int
    md5: str | None
    updated: datetime | None


@dataclass
class SyncStats:
    """What a tree sync did: files copied, files skipped as already identical, bytes copied,
    objects refused because their name would land outside the target folder, and the seconds
    the copies took."""

    copied: int = 0
    skipped: int = 0
    bytes: int = 0
    refused: int = 0
    seconds: float = 0.0

    def rate(self) -> str:
        """`in 12.3 s, 410 files/s` (empty when nothing was copied)."""
        if not self.copied:
            return ""
        per_second = self.copied / max(self.seconds, 1e-9)
        return f"in {self.seconds:.1f} s, {per_second:,.0f} files/s"


def is_gcs(path: str | os.PathLike[str]) -> bool:
    return str(path).startswith(GCS_SCHEME)


def split_gcs(url: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> ("bucket", "a/b"); the key has no leading slash."""
    if not is_gcs(url):
        raise ValueError(f"{url!r} is not a gs:// URL; expected gs://BUCKET/PATH")
    bucket, _, key = url[len(GCS_SCHEME) :].partition("/")
    if not bucket or any(c in bucket for c in " \\"):
        raise ValueError(f"{url!r} has no valid bucket name; expected gs://BUCKET/PATH")
    return bucket, key.lstrip("/")


def join(base: str, *parts: str) -> str:
    """Joins path parts for both gs:// URLs and local paths."""
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return str(Path(base, *parts))


def local_path(root: str | os.PathLike[str], name: str) -> Path:
    """`root/name` for an object name read from a bucket, which nothing guarantees is harmless.

    GCS accepts names with `..`, `.` and empty segments (`runs/r1/../../x`, `runs/r1//etc/x`);
    joined as they are, they land outside `root` or at an absolute path. Raises UnsafeNameError
    for those, and for names that resolve outside `root` through a symlink already there."""
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeNameError(f"object name {name!r} has an empty, '.' or '..' segment")
    target = Path(root, *parts)
    if not target.resolve().is_relative_to(Path(root).resolve()):
        raise UnsafeNameError(f"object name {name!r} resolves outside {str(root)!r}")
    return target


def client() -> gcs.Client:
    """The storage client, cached per emulator setting (the demo and tests switch it at run time;
    `forget_client` drops it when they switch identity).

    Default credentials, also against the emulator (STORAGE_EMULATOR_HOST), whose IAM-enforcing
    front (kgg/common/gcs_front.py) knows the caller by them; anonymous there only when there are
    none (and the front refuses it, as GCS refuses an anonymous caller)."""
    return _client_for(os.environ.get(EMULATOR_ENV) or None)


def forget_client() -> None:
    """The next `client()` is made anew, with the credentials in force then."""
    _client_for.cache_clear()


@functools.cache
def _client_for(emulator_host: str | None) -> gcs.Client:
    from google.cloud import storage

    if emulator_host:
        import google.auth
        import google.auth.exceptions

        try:
            credentials, _ = google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        return storage.Client(project="local", credentials=credentials)
    import google.auth.exceptions

    try:
        return storage.Client()
    except google.auth.exceptions.DefaultCredentialsError as error:
        raise StorageError(
            f"no Google Cloud credentials found ({error}); run `{CREDENTIALS_FIX}` "
            "or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from error


def _blob(url: str) -> gcs.Blob:
    bucket, key = split_gcs(url)
    if not key:
        raise ValueError(f"{url!r} names a bucket, not an object; expected gs://BUCKET/PATH")
    return client().bucket(bucket).blob(key)


def _explain(url: str, error: Exception) -> StorageError:
    """Turns a google.api_core error into a StorageError that says what to check."""
    from google.api_core import exceptions as api

    bucket = split_gcs(url)[0]
    if isinstance(error, api.NotFound):
        hint = (
            f"bucket {bucket!r} does not exist; check the name (`gcloud storage ls gs://{bucket}`)"
        )
    elif isinstance(error, api.Forbidden | api.Unauthorized):
        hint = (
            f"no permission on bucket {bucket!r}; check the account's roles on it "
            f"(roles/storage.objectAdmin) or run `{CREDENTIALS_FIX}`"
        )
    else:
        hint = f"check the network and the bucket {bucket!r}"
    return StorageError(f"{url}: {error.__class__.__name__}: {hint} ({error})")


@functools.cache
def _api_errors() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions as api

    return (api.GoogleAPICallError,)


def _guard(url: str, action: Callable[[], Any]) -> Any:
    try:
        return action()
    except _api_errors() as error:
        raise _explain(url, error) from error


def read_bytes(url: str | os.PathLike[str]) -> bytes | None:
    """The object's or file's content, or None when it does not exist (a missing bucket raises)."""
    url = str(url)
    if not is_gcs(url):
        path = Path(url)
        return path.read_bytes() if path.is_file() else None
    from google.api_core import exceptions as api

    blob = _blob(url)
    try:
        return blob.download_as_bytes()
    except api.NotFound:
        _check_bucket(url)
        return None
    except api.GoogleAPICallError as error:
        raise _explain(url, error) from error


def _check_bucket(url: str) -> None:
    """After a 404 on an object: raises when the bucket itself does not exist. A 403 here means
    it exists and this identity may not read its metadata (storage.buckets.get, which the VM's
    roles/storage.objectAdmin lacks): the object is simply missing."""
    from google.api_core import exceptions as api

    bucket = _blob(url).bucket
    try:
        found = bucket.exists()
    except api.Forbidden:
        return
    except api.GoogleAPICallError as error:
        raise _explain(url, error) from error
    if not found:
        raise _explain(url, api.NotFound(f"bucket {bucket.name} not found"))


def write_bytes(url: str | os.PathLike[str], data: bytes, content_type: str | None = None) -> None:
    """Writes the whole content; local parent folders are created, local writes are atomic."""
    url = str(url)
    if not is_gcs(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return
    blob = _blob(url)
    _guard(url, lambda: blob.upload_from_string(data, content_type=content_type))


def generation(url: str) -> tuple[int, int] | None:
    """The object's (generation, size), or None when it does not exist: a follower reads only
    what a new generation added."""
    blob = _blob(url)
    found = _guard(url, lambda: blob.bucket.get_blob(blob.name))
    return None if found is None else (int(found.generation), int(found.size or 0))


def read_from(url: str, start: int, object_generation: int, end: int | None = None) -> bytes | None:
    """The bytes of that generation of the object from `start` on (to `end`, inclusive, when
    given: a ranged read); None when that generation is gone (replaced meanwhile: the caller
    looks again)."""
    from google.api_core import exceptions as api

    bucket, key = split_gcs(url)
    blob = client().bucket(bucket).blob(key, generation=object_generation)
    try:
        return blob.download_as_bytes(start=start, end=end)
    except api.NotFound:
        return None
    except api.GoogleAPICallError as error:
        raise _explain(url, error) from error


def read_limited(url: str | os.PathLike[str], max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes | None:
    """The content of an object (or file) of at most `max_bytes`, None when there is none;
    TooLargeError naming its size when it is bigger. The size is that of the very generation
    read, so a writer cannot swap a bigger one in between."""
    url = str(url)
    if not is_gcs(url):
        path = Path(url)
        if not path.is_file():
            return None
        if path.stat().st_size > max_bytes:
            raise TooLargeError(_too_large(url, path.stat().st_size, max_bytes))
        return path.read_bytes()
    for _ in range(3):  # a generation replaced between the two calls: look again
        current = generation(url)
        if current is None:
            return None
        object_generation, size = current
        if size > max_bytes:
            raise TooLargeError(_too_large(url, size, max_bytes))
        data = read_from(url, 0, object_generation) if size else b""
        if data is not None:
            return data
    raise StorageError(f"{url}: replaced while it was read, three times; try again")


def _too_large(url: str, size: int, max_bytes: int) -> str:
    return (
        f"{url} holds {size / 1e6:.1f} MB, more than the {max_bytes / 1e6:.1f} MB read from it "
        "(this tool writes far less there: check who can write the bucket)"
    )


def read_json(url: str | os.PathLike[str]) -> Any | None:
    data = read_bytes(url)
    return None if data is None else json.loads(data)


def write_json(url: str | os.PathLike[str], obj: Any) -> None:
    data = json.dumps(obj, indent=2, sort_keys=False, default=str).encode()
    write_bytes(url, data + b"\n", content_type="application/json")


def local_md5(path: str | os.PathLike[str]) -> str:
    """Base64 of the file's MD5 digest, the format of GCS's `md5Hash`."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def _iter_local(root: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(root):
        for filename in sorted(filenames):
            yield Path(dirpath, filename)


def list_objects(url_prefix: str | os.PathLike[str]) -> list[ObjectInfo]:
    """Objects (or files, recursively) under a prefix, sorted by name; local files have no md5.

    The prefix is treated as a folder: `gs://b/data` lists `data/...`, not `data2/...`."""
    url_prefix = str(url_prefix)
    if not is_gcs(url_prefix):
        root = Path(url_prefix)
        if not root.is_dir():
            return []
        infos = []
        for path in _iter_local(root):
            stat = path.stat()
            infos.append(
                ObjectInfo(
                    name=path.relative_to(root).as_posix(),
                    size=stat.st_size,
                    md5=None,
                    updated=datetime.fromtimestamp(stat.st_mtime).astimezone(),
                )
            )
        return sorted(infos, key=lambda info: info.name)
    bucket, prefix = split_gcs(url_prefix)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""

    def listing() -> list[ObjectInfo]:
        return [
            ObjectInfo(
                name=blob.name[len(prefix) :],
                size=int(blob.size or 0),
                md5=blob.md5_hash,
                updated=blob.updated,
            )
            for blob in client().list_blobs(bucket, prefix=prefix)
            if not blob.name.endswith("/")
        ]

    return sorted(_guard(url_prefix, listing), key=lambda info: info.name)


def _same_local(path: Path, size: int, md5: str | None) -> bool:
    if not path.is_file() or path.stat().st_size != size:
        return False
    return md5 is None or local_md5(path) == md5


def download_file(url: str, local_path: str | os.PathLike[str]) -> None:
    """Copies one object to a local file atomically (a killed copy never looks finished)."""
    path = Path(local_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    blob = _blob(url)
    _guard(url, lambda: blob.download_to_filename(str(tmp)))
    tmp.replace(path)


def upload_file(local_path: str | os.PathLike[str], url: str) -> None:
    """Copies one local file to `url` (gs:// or a local path)."""
    if not is_gcs(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, url)
        return
    blob = _blob(url)
    _guard(url, lambda: blob.upload_from_filename(str(local_path)))


def _parallel(jobs: Sequence[Callable[[], None]], workers: int, progress: bool, desc: str) -> None:
    """Local copies (a local `url_prefix`): a pool of threads."""
    if not jobs:
        return
    bar = _bar(len(jobs), progress, desc)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
            if bar is not None:
                bar.update()
    except BaseException:
        # A failure or SIGTERM (the VM stops in ~30 s): drop the transfers not yet started
        # instead of waiting for all of them.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if bar is not None:
        bar.close()


def _bar(total: int, progress: bool, desc: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", leave=False)


# Files per worker in one transfer_manager call. Each call waits for all its files: a failure or
# SIGTERM waits for at most that many (2 s at 250 files/s), every finished call renames its
# downloads into place (a kill keeps them), and the progress bar moves per call. Measured
# against the GCS emulator (1,500 files of 30 KB, 8 threads): 16, 64 and 1000 per worker all
# 290-355 files/s; the hand-written thread pool this replaced 214-264.
TRANSFERS_PER_WORKER = 64


def _chunks(items: list[Any], workers: int) -> Iterator[list[Any]]:
    size = max(1, workers) * TRANSFERS_PER_WORKER
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _raise_first(failures: list[tuple[str, BaseException]]) -> None:
    """The first failed transfer of a chunk, explained as every storage error is."""
    if not failures:
        return
    url, error = failures[0]
    if isinstance(error, _api_errors()):
        raise _explain(url, error) from error
    raise error


def _bucket_and_folder(url_prefix: str) -> tuple[Any, str]:
    """The bucket of a gs:// prefix and the prefix as a folder (`a/b/`, or "" for the root)."""
    bucket_name, prefix = split_gcs(url_prefix)
    return client().bucket(bucket_name), prefix.rstrip("/") + "/" if prefix.strip("/") else ""


def download_objects(
    url_prefix: str,
    names: list[tuple[str, Path]],
    workers: int = 8,
    progress: bool = True,
) -> None:
    """Downloads the objects `names` (relative to `url_prefix`) to their local paths with
    google-cloud-storage's transfer_manager, `workers` at a time. Each lands under a hidden
    `.NAME.part` and is renamed when its chunk is done: a killed download never looks whole."""
    from google.cloud.storage import transfer_manager

    bucket, base = _bucket_and_folder(url_prefix)
    bar = _bar(len(names), progress, "download")
    for chunk in _chunks(names, workers):
        pairs, parts = [], []
        for name, target in chunk:
            target.parent.mkdir(parents=True, exist_ok=True)
            parts.append(target.with_name(f".{target.name}.part"))
            pairs.append((bucket.blob(base + name), str(parts[-1])))
        results = transfer_manager.download_many(
            pairs, max_workers=max(1, workers), worker_type=transfer_manager.THREAD
        )
        failures = []
        for (name, target), part, result in zip(chunk, parts, results, strict=True):
            if isinstance(result, BaseException):
                part.unlink(missing_ok=True)
                failures.append((join(url_prefix, name), result))
            else:
                part.replace(target)
        if bar is not None:
            bar.update(len(chunk))
        _raise_first(failures)
    if bar is not None:
        bar.close()


def upload_files(
    files: list[tuple[Path, str]], url_prefix: str, workers: int = 8, progress: bool = False
) -> None:
    """Uploads local files to their names under `url_prefix` with google-cloud-storage's
    transfer_manager, `workers` at a time."""
    from google.cloud.storage import transfer_manager

    bucket, base = _bucket_and_folder(url_prefix)
    bar = _bar(len(files), progress, "upload")
    for chunk in _chunks(files, workers):
        pairs = [(str(path), bucket.blob(base + name)) for path, name in chunk]
        results = transfer_manager.upload_many(
            pairs, max_workers=max(1, workers), worker_type=transfer_manager.THREAD
        )
        failures = [
            (join(url_prefix, name), result)
            for (_, name), result in zip(chunk, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if bar is not None:
            bar.update(len(chunk))
        _raise_first(failures)
    if bar is not None:
        bar.close()


def download_tree(
    url_prefix: str,
    local_dir: str | os.PathLike[str],
    workers: int = 8,
    progress: bool = True,
    include: Callable[[str], bool] | None = None,
    listing: list[ObjectInfo] | None = None,
) -> SyncStats:
    """Mirrors every object under `url_prefix` into `local_dir`, skipping identical files.

    `include(relative_name)` may filter objects; `listing` is the prefix's list_objects when the
    caller has it already (one listing of 50,000 objects is a hundred requests). A local
    `url_prefix` is copied the same way. Objects whose name would land outside `local_dir` are
    refused with a warning (see `local_path`) and counted in `refused`."""
    root = Path(local_dir)
    stats = SyncStats()
    wanted: list[tuple[str, Path]] = []
    for info in list_objects(url_prefix) if listing is None else listing:
        if include is not None and not include(info.name):
            continue
        try:
            target = local_path(root, info.name)
        except UnsafeNameError as error:
            # Whoever can write the bucket must not be able to write outside `local_dir`.
            warning = f"warning: not downloading from {url_prefix}: {error}"
            print(printable(warning), file=sys.stderr)
            stats.refused += 1
            continue
        md5 = info.md5
        if md5 is None and not is_gcs(url_prefix):
            source = Path(url_prefix, info.name)
            if target.is_file() and target.stat().st_size == info.size:
                md5 = local_md5(source)
        if _same_local(target, info.size, md5):
            stats.skipped += 1
            continue
        stats.copied += 1
        stats.bytes += info.size
        wanted.append((info.name, target))
    started = time.perf_counter()
    if is_gcs(url_prefix):
        download_objects(url_prefix, wanted, workers, progress)
    else:
        jobs = [
            functools.partial(upload_file, join(url_prefix, name), str(target))
            for name, target in wanted
        ]
        _parallel(jobs, workers, progress, "download")
    stats.seconds = time.perf_counter() - started
    return stats


def upload_tree(
    local_dir: str | os.PathLike[str],
    url_prefix: str,
    workers: int = 8,
    progress: bool = False,
    include: Callable[[str], bool] | None = None,
) -> SyncStats:
    """Mirrors the files under `local_dir` to `url_prefix`, skipping objects with the same MD5.

    `include(relative_name)` may filter files (the job uploads its state file last, on its own)."""
    root = Path(local_dir)
    remote = {info.name: info for info in list_objects(url_prefix)}
    stats = SyncStats()
    pending: list[tuple[Path, str]] = []
    for path in _iter_local(root) if root.is_dir() else []:
        name = path.relative_to(root).as_posix()
        if include is not None and not include(name):
            continue
        size = path.stat().st_size
        existing = remote.get(name)
        if existing is not None and existing.size == size:
            target = Path(url_prefix, name)
            theirs = existing.md5 or (local_md5(target) if not is_gcs(url_prefix) else None)
            if theirs is not None and theirs == local_md5(path):
                stats.skipped += 1
                continue
        stats.copied += 1
        stats.bytes += size
        pending.append((path, name))
    started = time.perf_counter()
    if is_gcs(url_prefix):
        upload_files(pending, url_prefix, workers, progress)
    else:
        jobs = [functools.partial(upload_file, p, join(url_prefix, n)) for p, n in pending]
        _parallel(jobs, workers, progress, "upload")
    stats.seconds = time.perf_counter() - started
    return stats


def delete_prefix(url_prefix: str) -> int:
    """Deletes every object (or the folder) under a prefix; returns how many were deleted."""
    if not is_gcs(url_prefix):
        root = Path(url_prefix)
        if not root.exists():
            return 0
        count = sum(1 for _ in _iter_local(root))
        shutil.rmtree(root)
        return count
    bucket, prefix = split_gcs(url_prefix)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""

    def delete() -> int:
        blobs = list(client().list_blobs(bucket, prefix=prefix))
        for blob in blobs:
            blob.delete()
        return len(blobs)

    return _guard(url_prefix, delete)


def delete_file(url: str | os.PathLike[str]) -> bool:
    """Deletes one object or local file; returns whether there was one."""
    url = str(url)
    if not is_gcs(url):
        path = Path(url)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed
    from google.api_core import exceptions as api

    blob = _blob(url)
    try:
        blob.delete()
    except api.NotFound:
        return False
    except api.GoogleAPICallError as error:
        raise _explain(url, error) from error
    return True
