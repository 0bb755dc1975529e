"""One run per s3:// output prefix at a time, across machines: its lock object.

The local lock (``tasks.out_lock``) guards a run's staging folder on one machine; two
machines writing ``--out s3://bucket/run`` at once would still mix their files under
the prefix. This lock is an object, ``PREFIX/.autolabel.lock``, created with S3's
conditional write (``If-None-Match: *``: the store refuses a second create), so exactly
one machine gets it, with no lock server and nothing but the bucket both already use.
A store that ignores conditional writes (older MinIO or Ceph releases) gives no such
protection; one that refuses them fails the run in one line.

A lock object cannot be dropped by the kernel when its holder dies, so the holder
rewrites it every ``heartbeat_s`` seconds with a new beat number (so every write has a
new ETag) and ``If-Match`` on its last ETag: a holder whose lock was taken over notices
instead of overwriting the new holder, and says so when the run ends. A lock not
rewritten for ``stale_after_s`` seconds (by the store's clock, so a worker with a fast
clock cannot call a live lock stale) is taken over by the next run, again with
``If-Match``, so two runs that both find it stale cannot both take it. A run killed
with ``kill -9`` therefore blocks its prefix for at most ``stale_after_s``; the refusal
says how long is left. Release deletes the object only if it is still this run's.

The shards of ``label-sharded`` write under the prefix while their parent holds this
lock; they never take it themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from tasks.credits.location import one_line
from tasks.out_lock import LOCK_NAME, LockOwner, OutFolderLocked, hold_out_lock
from tasks.s3 import S3Location, is_s3, join_key, local_folder, s3_client

HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0

log = logging.getLogger(__name__)


class PrefixLocked(OutFolderLocked):
    """Another run, maybe on another machine, holds (or took over) the prefix."""


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
) -> Iterator[PrefixLock]:
    """Hold ``destination``'s lock object for the ``with`` block (see the module doc).

    Raises:
        PrefixLocked: another live run holds it (one line: who, since when, and when
            the lock would expire if that run died); or, when the block ends without
            an error, the lock was taken over meanwhile (the outputs may be mixed).
    """
    lock = PrefixLock(client, destination, LockOwner.here(what))
    try:
        lock.acquire(stale_after_s)
    except (ClientError, BotoCoreError) as error:  # refused, unreachable: one line
        raise PrefixLocked(
            f"{destination}: cannot take its lock ({one_line(error)}); the store must "
            "accept conditional writes (If-None-Match)",
            destination,
            None,
        ) from None
    beat = threading.Thread(
        target=lock.beat_until_released,
        args=(heartbeat_s,),
        name="s3-lock-heartbeat",
        daemon=True,
    )
    beat.start()
    failed = True
    try:
        yield lock
        failed = False
    finally:
        lock.released.set()
        beat.join()
        lock.release()
        if lock.lost and not failed:
            raise PrefixLocked(
                f"{destination}: another run took over this run's lock while it "
                "wrote (its heartbeat could not reach the store in time): check the "
                "outputs, which may be mixed",
                destination,
                None,
            )


class PrefixLock:
    """The lock object of one prefix, as one run holds it."""

    def __init__(self, client, destination: str, owner: LockOwner) -> None:
        location = S3Location.parse(destination)
        self.client, self.destination, self.owner = client, destination, owner
        self.bucket = location.bucket
        self.key = join_key(location.prefix.rstrip("/"), LOCK_NAME)
        self.etag: str | None = None
        self.beats = 0
        self.lost = False
        self.released = threading.Event()

    def acquire(self, stale_after_s: float) -> None:
        """Create the lock object, or take over a stale one."""
        try:
            self.etag = self._write(IfNoneMatch="*")
            return
        except ClientError as error:
            if not _precondition_failed(error):
                raise
        try:
            current = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:  # released meanwhile: once more
            self.acquire(stale_after_s)
            return
        holder = LockOwner.from_json(current["Body"].read())
        age = (_store_now(current) - current["LastModified"]).total_seconds()
        if age <= stale_after_s:
            who = holder.describe() if holder else "another run"
            raise PrefixLocked(
                f"{self.destination} is being written by {who}: wait for it to "
                f"finish (if that run died, its lock expires in "
                f"{stale_after_s - age:.0f} s)",
                self.destination,
                holder,
            )
        try:  # stale: its holder stopped writing it; take it over unless another did
            self.etag = self._write(IfMatch=current["ETag"])
        except ClientError as error:
            if not _precondition_failed(error):
                raise
            raise PrefixLocked(
                f"{self.destination}: another run took over its stale lock just now",
                self.destination,
                None,
            ) from None

    def refresh(self) -> None:
        """One heartbeat: rewrite the object if it is still this run's; note when it
        is not (taken over). A store that cannot be reached now is tried again at
        the next beat."""
        if self.lost:
            return
        try:
            self.etag = self._write(IfMatch=self.etag)
        except ClientError as error:
            if _precondition_failed(error):
                self.lost = True
                log.warning("%s: the lock was taken over by another run", self.key)
            else:
                log.warning("lock heartbeat for %s failed: %s", self.destination, error)
        except BotoCoreError as error:
            log.warning("lock heartbeat for %s failed: %s", self.destination, error)

    def beat_until_released(self, interval_s: float) -> None:
        while not self.released.wait(interval_s):
            self.refresh()

    def release(self) -> None:
        """Delete the object if it is still this run's (never a new holder's); a
        failure is only logged: the lock expires on its own."""
        if self.lost:
            return
        try:
            self.client.delete_object(
                Bucket=self.bucket, Key=self.key, IfMatch=self.etag
            )
        except (ClientError, BotoCoreError) as error:
            log.warning("could not release the lock %s: %s", self.destination, error)

    def _write(self, **condition: str) -> str:
        self.beats += 1
        body = json.dumps({**self.owner.__dict__, "beat": self.beats}).encode()
        return self.client.put_object(
            Bucket=self.bucket, Key=self.key, Body=body, **condition
        )["ETag"]


def _store_now(response: dict) -> datetime:
    """The store's clock at ``response`` (its Date header); this machine's without
    one. Lock ages compare the store's times only, whatever this machine's clock."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)


def _precondition_failed(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
