"""Chunk shards on S3: how workers without a shared disk hand their labels over.

A run with an ``s3://bucket/prefix`` output works in a local folder (its scratch) and
keeps the chunk shards under the prefix at the same relative paths as in a local
output (``labels/chunk-<key>.parquet``, ``images/chunk-<key>.parquet``). A shard run
first pulls the shards of its chunks that are on S3 already (a dead run's finished
chunks: reused, not labeled again), then pushes each chunk's two shards as soon as
they are written: each one PUT, so a reader sees a whole shard or none, and a rerun
overwrites the same key. The image manifest goes last: a chunk counts as done only
when both objects exist. The parent pulls every planned chunk's shards into its own
staging folder, exports and reports there, and uploads the outputs as a single run
does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.labels import OutputLayout
from tasks.s3 import (
    S3Location,
    delete_keys,
    download_to,
    join_key,
    list_keys,
    put_file,
    s3_client,
)

# Only names that OutputLayout itself makes are taken from a listing (a key can hold
# anything: '..', slashes, odd unicode).
_SHARD_NAME = re.compile(r"chunk-([0-9A-Za-z_-]{1,128})\.parquet")


def shard_folders(out: str | Path) -> tuple[Path, Path]:
    """The local folders chunk shards live in: labels/ and images/."""
    layout = OutputLayout(out)
    return layout.labels_dir, layout.images_dir


def remote_shards(destination: str, out: str | Path, *, client) -> dict[str, Path]:
    """Chunk shards under ``destination``: object URI -> the local path in ``out``
    that it mirrors."""
    location = S3Location.parse(destination)
    found: dict[str, Path] = {}
    for folder in shard_folders(out):
        relative = folder.relative_to(Path(out)).as_posix()
        prefix = join_key(location.prefix, relative) + "/"
        for key in list_keys(location.uri(prefix), client=client):
            name = key[len(prefix) :]
            if _SHARD_NAME.fullmatch(name):
                found[location.uri(key)] = folder / name
    return found


def pull_shards(
    destination: str,
    out: str | Path,
    keys: Iterable[str] | None = None,
    *,
    client,
) -> int:
    """Download the chunk shards under ``destination`` into ``out``: those of the
    chunk ``keys``, or all of them. Returns how many files came."""
    wanted = None if keys is None else set(keys)
    count = 0
    for uri, path in remote_shards(destination, out, client=client).items():
        match = _SHARD_NAME.fullmatch(path.name)
        if wanted is not None and (match is None or match.group(1) not in wanted):
            continue
        download_to(uri, path, client=client)
        count += 1
    return count


def push_shards(out: str | Path, destination: str, chunk_key: str, *, client) -> int:
    """Upload one chunk's shards from ``out`` to ``destination`` (labels first, the
    image manifest last). A chunk not written (a budget stop) uploads nothing."""
    location = S3Location.parse(destination)
    paths = OutputLayout(out).shard_paths(chunk_key)
    if not all(path.exists() for path in paths):
        return 0
    for path in paths:
        relative = path.relative_to(Path(out)).as_posix()
        put_file(path, location.uri(join_key(location.prefix, relative)), client=client)
    return len(paths)


def prune_remote_shards(
    destination: str, out: str | Path, chunk_keys: Iterable[str], *, client
) -> int:
    """Delete the chunk shards under ``destination`` that are not of ``chunk_keys``
    (images gone or settings changed), as ``prune_stale_shards`` does locally."""
    keep = set(chunk_keys)
    stale = [
        uri
        for uri, path in remote_shards(destination, out, client=client).items()
        if (match := _SHARD_NAME.fullmatch(path.name)) and match.group(1) not in keep
    ]
    if stale:
        bucket = S3Location.parse(destination).bucket
        delete_keys(bucket, [S3Location.parse(u).key for u in stale], client=client)
    return len(stale)


@task(name="pull-shards", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def pull_shards_task(
    destination: str,
    out: str,
    keys: list[str] | None,
    endpoint_url: str | None,
) -> int:
    """``pull_shards`` (retried: transfers are the kind of step that flakes)."""
    return pull_shards(destination, out, keys, client=s3_client(endpoint_url))


@task(name="push-shards", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def push_shards_task(
    out: str, destination: str, chunk_key: str, endpoint_url: str | None
) -> int:
    """``push_shards`` (retried)."""
    return push_shards(out, destination, chunk_key, client=s3_client(endpoint_url))


@task(name="prune-remote-shards", cache_policy=NO_CACHE)
def prune_remote_shards_task(
    destination: str, out: str, chunk_keys: list[str], endpoint_url: str | None
) -> int:
    """``prune_remote_shards``."""
    return prune_remote_shards(
        destination, out, chunk_keys, client=s3_client(endpoint_url)
    )
