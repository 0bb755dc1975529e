"""S3 (and S3-compatible stores) as a source of images and a destination for exports.

Listing pages through the bucket (1000 keys a page) and keeps only image keys; objects
are fetched one at a time into a local cache when a chunk needs them, never the whole
bucket. Cache file names are hashes of the object's URI, so no key ('..',
absolute-looking paths, odd unicode) can place a file outside the cache folder.
Credentials come from boto3's normal chain (environment, ~/.aws, instance roles);
``endpoint_url`` points at S3-compatible stores.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.image_files import size_problem
from tasks.images import IMAGE_SUFFIXES, ImageRef, SourceError
from tasks.out_lock import LOCK_NAME
from tasks.training.model_folder import TRAINED_MODELS_FOLDER
from tasks.video import VIDEO_SUFFIXES

SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ('' for the whole bucket)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith(SCHEME):
            raise SourceError(f"{uri}: not an s3:// URI")
        bucket, _, prefix = uri[len(SCHEME) :].partition("/")
        if not bucket:
            raise SourceError(f"{uri}: no bucket name")
        return cls(bucket, prefix)

    @property
    def key(self) -> str:
        """The prefix read as one object's key (for URIs that name an object)."""
        return self.prefix

    def uri(self, key: str) -> str:
        return f"{SCHEME}{self.bucket}/{key}"


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEME)


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client; credentials from the standard AWS chain."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url)


def list_images(source: str, *, client) -> list[ImageRef]:
    """Every image object under ``s3://bucket/prefix``, sorted by key.

    ``relative_path`` is the key below the prefix, so exports mirror the bucket's
    folders.
    """
    return list_objects(source, client=client, suffixes=IMAGE_SUFFIXES)


def list_objects(source: str, *, client, suffixes: frozenset[str]) -> list[ImageRef]:
    """Objects under ``s3://bucket/prefix`` whose names end in one of ``suffixes``."""
    location = S3Location.parse(source)
    prefix = location.prefix
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    refs = [
        ImageRef(location.uri(key), key[len(prefix) :])
        for key in _keys(client, location.bucket, prefix)
        if PurePosixPath(key).suffix.lower() in suffixes and not key.endswith("/")
    ]
    return sorted(refs, key=lambda ref: ref.relative_path)


def _keys(client, bucket: str, prefix: str) -> Iterator[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                yield item["Key"]
    except (BotoCoreError, ClientError) as error:
        raise SourceError(f"cannot list s3://{bucket}/{prefix}: {error}") from None


def list_keys(prefix_uri: str, *, client) -> list[str]:
    """Every object key under ``s3://bucket/prefix`` (the prefix taken literally)."""
    location = S3Location.parse(prefix_uri)
    return list(_keys(client, location.bucket, location.prefix))


def download_to(uri: str, path: Path, *, client) -> None:
    """The object at ``uri`` into ``path``, atomically: a reader sees the whole file
    or none (downloaded beside it, then renamed)."""
    location = S3Location.parse(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    try:
        client.download_file(location.bucket, location.key, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def put_file(path: Path, uri: str, *, client) -> None:
    """``path`` as the object ``uri``: one PUT (or a multipart upload completed in
    one step), so readers see the old object or the new one, never a part; writing
    the same key again replaces it."""
    location = S3Location.parse(uri)
    client.upload_file(str(path), location.bucket, location.key)


def delete_keys(bucket: str, keys: list[str], *, client) -> None:
    """Delete ``keys`` from ``bucket`` (1000 per request, the API's limit)."""
    for start in range(0, len(keys), 1000):
        client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]},
        )


def join_key(prefix: str, relative: str) -> str:
    """``prefix``/``relative`` as one key ('' prefix: ``relative`` itself)."""
    return "/".join(filter(None, [prefix.rstrip("/"), relative]))


def cache_path(uri: str, cache_dir: Path) -> Path:
    """Where the object at ``uri`` is cached: a hash of the URI plus a safe suffix."""
    suffix = PurePosixPath(uri).suffix.lower()
    if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        suffix = ""
    return cache_dir / "s3" / f"{hashlib.sha256(uri.encode()).hexdigest()[:32]}{suffix}"


def fetch(uri: str, cache_dir: Path, *, client) -> Path:
    """The object at ``uri`` as a local file in ``cache_dir`` (downloaded once)."""
    path = cache_path(uri, cache_dir)
    if path.exists():
        return path
    location = S3Location.parse(uri)
    # The size first: an object over the cap is never downloaded (see size_problem).
    size = client.head_object(Bucket=location.bucket, Key=location.key)["ContentLength"]
    problem = size_problem(size)
    if problem:
        raise ValueError(problem)
    _download(client, location.bucket, location.key, path)
    return path


def _download(client, bucket: str, key: str, path: Path) -> None:
    """Download to ``path`` through a ``.part`` file, so a broken transfer never
    leaves a file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    client.download_file(bucket, key, str(partial))
    partial.replace(path)


def staging_folder(destination: str, shard: tuple[int, int] | None = None) -> Path:
    """The local folder a run writes to before its outputs go to ``destination``.

    Stable per destination, so a rerun finds its finished chunks and resumes. A shard
    run (``shard``: index, count) gets a scratch folder of its own: shard runs on one
    worker never share files, and the parent's staging folder holds only its own.
    """
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = (
        destination
        if shard is None
        else f"{destination}#shard-{shard[0]}-of-{shard[1]}"
    )
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return root / "autolabel" / "outputs" / digest


def local_folder(out: str | Path) -> Path:
    """Where a run with output ``out`` writes its files: the folder itself, or an
    s3:// output's staging folder (the outputs are uploaded from it at the end)."""
    return staging_folder(str(out)) if is_s3(str(out)) else Path(out)


def fetch_output_file(
    destination: str, folder: Path, name: str, *, client
) -> Path | None:
    """``folder/name``, replaced by ``destination/name`` when the bucket's copy is
    newer (a run on another machine wrote it since) or this machine has none; None
    when neither has it. So ``--reuse-approved`` works, with the latest approval, on
    any machine that reaches the bucket."""
    from botocore.exceptions import ClientError

    path = folder / name
    location = S3Location.parse(destination)
    key = join_key(location.prefix.rstrip("/"), name)
    try:
        remote = client.head_object(Bucket=location.bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return path if path.exists() else None
        raise
    if not path.exists() or remote["LastModified"].timestamp() > path.stat().st_mtime:
        _download(client, location.bucket, key, path)
    return path


def upload_folder(
    folder: Path,
    destination: str,
    *,
    client,
    exclude: tuple[str, ...] = (".cache", LOCK_NAME, TRAINED_MODELS_FOLDER),
) -> int:
    """Copy every file under ``folder`` to ``s3://bucket/prefix/<relative path>``,
    except the top-level entries named in ``exclude``: the cache of source images,
    the run's lock file, and models trained from the review page (checkpoints
    included: ``--model`` takes a folder on the machine that trained it)."""
    location = S3Location.parse(destination)
    prefix = location.prefix.rstrip("/")
    count = 0
    files = (
        p
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] not in exclude
    )
    for path in sorted(files):
        key = join_key(prefix, path.relative_to(folder).as_posix())
        client.upload_file(str(path), location.bucket, key)
        count += 1
    return count


@task(name="upload-outputs", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def upload_outputs_task(folder: str, destination: str, endpoint_url: str | None) -> int:
    """Send a run's outputs to S3 (retried: a transfer is the kind of step that
    flakes)."""
    return upload_folder(Path(folder), destination, client=s3_client(endpoint_url))
