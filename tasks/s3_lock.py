"""One run per s3:// output prefix at a time, across machines: its lock object.

The local lock (``tasks.out_lock``) guards a run's staging folder on one machine; two
machines writing ``--out s3://bucket/run`` at once would still mix their files under
the prefix. This lock is an object, ``PREFIX/.autolabel.lock``, created with S3's
conditional write (``If-None-Match: *``: the store refuses a second create), so exactly
one machine gets it, with no lock server and nothing but the bucket both already use.

A lock object cannot be dropped by the kernel when its holder dies, so the holder
rewrites it every ``heartbeat_s`` seconds (``If-Match`` on the last ETag, so a holder
that lost the lock notices rather than overwriting a newer holder), and a lock whose
last write is older than ``stale_after_s`` is taken over by the next run, again with
``If-Match``, so two runs that both find it stale cannot both take it. A run killed
with ``kill -9`` therefore blocks its prefix for at most ``stale_after_s``; the
refusal says how long is left.

The shards of ``label-sharded`` write under the prefix while their parent holds this
lock; they never take it themselves.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from botocore.exceptions import ClientError

from tasks.out_lock import LOCK_NAME, LockOwner, OutFolderLocked, hold_out_lock
from tasks.s3 import S3Location, is_s3, join_key, local_folder, s3_client

HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0


class PrefixLocked(OutFolderLocked):
    """Another run, maybe on another machine, holds the s3:// output prefix."""


@contextlib.contextmanager
def hold_output_lock(
    out: str | Path, what: str, endpoint_url: str | None = None
) -> Iterator[None]:
    """Everything a run on ``out`` holds: its local folder's lock (an s3:// output's
    staging folder) and, for an s3:// output, the prefix's lock."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(hold_out_lock(local_folder(out), what))
        if is_s3(str(out)):
            client = s3_client(endpoint_url)
            stack.enter_context(hold_prefix_lock(str(out), what, client=client))
        yield


@contextlib.contextmanager
def hold_prefix_lock(
    destination: str,
    what: str,
    *,
    client,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
) -> Iterator[None]:
    """Hold ``destination``'s lock object for the ``with`` block (see the module doc).

    Raises:
        PrefixLocked: another live run holds it (one line: who, since when, and when
            the lock would expire if that run died).
    """
    location = S3Location.parse(destination)
    key = join_key(location.prefix.rstrip("/"), LOCK_NAME)
    owner = LockOwner.here(what)
    body = json.dumps(owner.__dict__).encode()
    etag = _acquire(client, location.bucket, key, body, destination, stale_after_s)
    beat = _Heartbeat(client, location.bucket, key, body, etag, heartbeat_s)
    beat.start()
    try:
        yield
    finally:
        beat.stop()
        if not beat.lost:
            client.delete_object(Bucket=location.bucket, Key=key)


def _acquire(
    client, bucket: str, key: str, body: bytes, destination: str, stale_after_s: float
) -> str:
    """Create the lock object, or take over a stale one; its new ETag."""
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")[
            "ETag"
        ]
    except ClientError as error:
        if not _precondition_failed(error):
            raise
    try:
        current = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:  # released meanwhile: try once more
        return _acquire(client, bucket, key, body, destination, stale_after_s)
    holder = _owner_of(current["Body"].read())
    age = (datetime.now(timezone.utc) - current["LastModified"]).total_seconds()
    if age <= stale_after_s:
        who = holder.describe() if holder else "another run"
        raise PrefixLocked(
            f"{destination} is being written by {who}: wait for it to finish (if that "
            f"run died, its lock expires in {stale_after_s - age:.0f} s)",
            destination,
            holder,
        )
    try:  # stale: its holder stopped writing it; take it over unless another run did
        return client.put_object(
            Bucket=bucket, Key=key, Body=body, IfMatch=current["ETag"]
        )["ETag"]
    except ClientError as error:
        if not _precondition_failed(error):
            raise
        raise PrefixLocked(
            f"{destination}: another run took over its stale lock just now",
            destination,
            None,
        ) from None


class _Heartbeat(threading.Thread):
    """Rewrites the lock object every ``interval`` s while the run holds it."""

    def __init__(
        self, client, bucket: str, key: str, body: bytes, etag: str, interval: float
    ) -> None:
        super().__init__(name="s3-lock-heartbeat", daemon=True)
        self._client, self._bucket, self._key, self._body = client, bucket, key, body
        self._etag, self._interval = etag, interval
        self._stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._etag = self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=self._body,
                    IfMatch=self._etag,
                )["ETag"]
            except ClientError as error:
                if _precondition_failed(error):  # taken over: never delete theirs
                    self.lost = True
                    return
                # A failed heartbeat (network) is retried at the next interval.

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def _precondition_failed(error) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _owner_of(raw: bytes) -> LockOwner | None:
    try:
        return LockOwner(**json.loads(raw))
    except (ValueError, TypeError):
        return None
