"""One run per output folder at a time: ``OUT/.autolabel.lock``.

Two runs that write one ``--out`` at the same time would both fail and leave a folder
with files from both. ``hold_out_lock(out, what)`` is held for the whole run; a second
run on the same folder stops at once with ``OutFolderLocked``, a one-line message that
names the folder, the holder (pid, host, since when, which command) and what to do.

Why ``fcntl.flock`` on an open file rather than ``O_CREAT | O_EXCL``: the kernel drops
a flock when the process that holds it dies, however it dies (``kill -9`` included), so
a lock left by a killed run is free again at once and can be told from a live one
without guessing from pids (a pid can be reused by an unrelated process; a run in
another container on the same machine has pids from another namespace). A file made
with ``O_EXCL`` stays behind after ``kill -9`` and its owner can only be guessed.

The file also records the owner (JSON: pid, host, since, what), to name the holder in
the message, and because a flock may not be seen across machines on a network file
system: a lock file written on another host is never taken over automatically, even
when the flock looks free; the message says to delete the file once no run is active
on that host.

Holding is reentrant within one process (a flow called from a CLI command that already
holds the lock does not lock itself out). The lock file is removed on release, on a
normal exit and on an exception alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".autolabel.lock"


class OutFolderLocked(RuntimeError):
    """Another run holds the output folder (its message is one line)."""

    def __init__(self, message: str, out: Path | str, holder: LockOwner | None) -> None:
        super().__init__(message)
        self.out = out
        self.holder = holder


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: str
    what: str

    @classmethod
    def here(cls, what: str) -> LockOwner:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
            what=what,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LockOwner | None:
        """The owner a lock records (JSON), or None when it is unreadable."""
        try:
            data = json.loads(text)
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                since=str(data["since"]),
                what=str(data["what"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"'{self.what}' (pid {self.pid} on host {self.host}, since {self.since})"


# Locks this process holds: resolved folder -> [open fd, depth].
_held: dict[Path, list[int]] = {}
_held_guard = threading.Lock()


def lock_path(out: Path) -> Path:
    return Path(out) / LOCK_NAME


def read_owner(out: Path) -> LockOwner | None:
    """The owner recorded in OUT's lock file, or None (no file, or unreadable)."""
    try:
        return LockOwner.from_json(lock_path(out).read_text())
    except OSError:
        return None


def _locked_message(out: Path, owner: LockOwner | None) -> str:
    who = owner.describe() if owner else "another run (owner not recorded yet)"
    return (
        f"Output folder {out} is in use by {who}; wait for that run to finish, "
        f"stop it, or choose another --out."
    )


def _foreign_message(out: Path, owner: LockOwner) -> str:
    return (
        f"Output folder {out} has a lock from host {owner.host}: {owner.describe()}; "
        f"it is not taken over automatically from another host: if no run is active "
        f"on {owner.host}, delete {lock_path(out)} and start again."
    )


def _open_locked(path: Path) -> int | None:
    """An fd on ``path`` holding an exclusive flock, or None if another holds it.

    Retries when the file was removed or replaced between open and flock (a holder
    that released meanwhile), so the flock is always on the file at ``path``.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _acquire(out: Path, what: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    fd = _open_locked(path)
    if fd is None:
        raise OutFolderLocked(
            _locked_message(out, read_owner(out)), out, read_owner(out)
        )
    try:
        me = LockOwner.here(what)
        previous = read_owner(out)
        if previous is not None and previous.host != me.host:
            raise OutFolderLocked(_foreign_message(out, previous), out, previous)
        # Same host and the flock was free: the previous holder (if any) is gone.
        payload = json.dumps(me.__dict__).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(out: Path, fd: int) -> None:
    # Unlink while still holding the flock, then close: a process that opened the
    # old file meanwhile sees it was replaced (_open_locked) and starts over.
    with contextlib.suppress(FileNotFoundError):
        if os.path.samestat(os.fstat(fd), os.stat(lock_path(out))):
            os.unlink(lock_path(out))
    os.close(fd)


@contextlib.contextmanager
def hold_out_lock(out: Path | str, what: str) -> Iterator[Path]:
    """Hold OUT/.autolabel.lock for the ``with`` block; yields the lock file's path.

    Creates OUT if missing. Raises ``OutFolderLocked`` (one-line message) when another
    live run holds the folder, or the lock file was written on another host. A lock
    left by a killed run on this host is taken over silently.
    """
    out = Path(out).expanduser().resolve()
    with _held_guard:
        entry = _held.get(out)
        if entry is not None:
            entry[1] += 1
        else:
            _held[out] = [_acquire(out, what), 1]
    try:
        yield lock_path(out)
    finally:
        with _held_guard:
            entry = _held[out]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[out]
                _release(out, entry[0])
