"""Checks of a run's surroundings, made before any model loads.

Loading Grounding DINO takes ~20 s, and a flow that fails on its first task prints
Prefect's tracebacks; a missing source, an output folder that is a file or full, or a
Roboflow project that refuses the key must instead fail at once, in one line that
names the thing and the fix. Every check here is cheap and has no side effect beyond
creating the output folder the run would create anyway.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from tasks.credits.location import (
    LEDGER_ENV,
    LedgerUnavailable,
    is_database_url,
    one_line,
    shown_location,
)
from tasks.images import SourceError
from tasks.s3 import is_s3

# Free space the output folder needs at least: the label table, exports and report of
# a small batch. A full disk part-way is still caught where it happens; this refuses
# the run that could not even start.
MIN_FREE_BYTES = 64 * 1024**2
_SQLITE_HEADER = b"SQLite format 3\x00"


class PreflightError(RuntimeError):
    """A run that cannot start; the message is one line: what, and what to do.

    ``usage`` tells an invalid combination of options (exit 2) from a thing that
    cannot be used (exit 1).
    """

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def check_source(source: str) -> None:
    """A local source must be a readable folder (URIs are checked when listed)."""
    if "://" in source:
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise PreflightError(f"source {source}: no such folder")
    if not path.is_dir():
        raise PreflightError(
            f"source {source} is a file, not a folder: give the folder that holds it"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise PreflightError(f"cannot read source {source}: permission denied")


def check_out(out: str | Path, *, source: str | None = None) -> None:
    """The output folder can be created and written, has room, and is not inside a
    local source (every rerun would label its own exported images)."""
    if is_s3(str(out)):
        return  # written to a local staging folder first; checked as that
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise PreflightError(f"--out {out} is a file: give a folder")
    if source is not None and "://" not in source:
        root = Path(source).expanduser().resolve()
        resolved = path.resolve()
        if resolved == root or root in resolved.parents:
            raise PreflightError(
                f"--out {out} is inside the source {source}: every run would label "
                "its own exported images; choose an --out outside the source",
                usage=True,
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PreflightError(
            f"--out {out} is not writable: {error.strerror or error}"
        ) from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise PreflightError(
            f"--out {out}: only {free // 1024**2} MiB free on its disk (at least "
            f"{MIN_FREE_BYTES // 1024**2} MiB needed): free some space or choose "
            "another --out"
        )


def check_ledger(path: str | Path) -> None:
    """An existing credit ledger must be an SQLite database this process can open; a
    PostgreSQL ledger must answer (and take its table) now, not after the model."""
    if is_database_url(path):
        _check_database_ledger(str(path))
        return
    ledger = Path(path).expanduser()
    if not ledger.exists():
        return
    if ledger.is_dir():
        raise PreflightError(f"credit ledger {ledger} is a folder, not a database file")
    try:
        with ledger.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise PreflightError(
            f"cannot read credit ledger {ledger}: {error.strerror or error}"
        ) from None
    if header and header != _SQLITE_HEADER:
        raise PreflightError(
            f"credit ledger {ledger} is not an SQLite database: point "
            "--credits-ledger at the right file, or move this one away"
        )
    try:
        connection = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise PreflightError(
            f"credit ledger {ledger} cannot be opened: {error}"
        ) from None


def _check_database_ledger(url: str) -> None:
    from tasks.credits.postgres import PostgresStorage

    try:
        PostgresStorage(url, timeout_s=10).check()
    except LedgerUnavailable as error:
        raise PreflightError(
            f"{error}: check --credits-ledger or {LEDGER_ENV}"
        ) from None
    except Exception as error:  # the server answered, but not as a ledger should
        raise PreflightError(
            f"credit ledger {shown_location(url)}: {one_line(error)}"
        ) from None


def check_s3_out(out: str, endpoint_url: str | None) -> None:
    """An s3:// output's bucket exists and takes this machine's credentials: a
    bucket that is not there must fail now, not after the labeling."""
    if not is_s3(out):
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.s3 import S3Location, s3_client

    try:
        bucket = S3Location.parse(out).bucket
    except SourceError as error:
        raise PreflightError(f"--out {error}", usage=True) from None
    try:
        s3_client(endpoint_url).head_bucket(Bucket=bucket)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        reason = {
            "404": "no such bucket",
            "NoSuchBucket": "no such bucket",
            "403": "access denied (check the AWS credentials)",
        }.get(code, one_line(error))
        raise PreflightError(f"--out {out}: {reason}") from None
    except BotoCoreError as error:
        raise PreflightError(f"--out {out}: {one_line(error)}") from None


def check_upload_target(upload_to: str | None) -> None:
    """The Roboflow project to upload to exists and takes this API key."""
    if not upload_to:
        return
    from clients.roboflow import RoboflowClient, RoboflowError, RoboflowTarget

    try:
        target = RoboflowTarget.parse(upload_to)
    except RoboflowError as error:
        raise PreflightError(f"--upload-to {error}", usage=True) from None
    try:
        RoboflowClient.resolve(workspace=target.workspace).open_project(target)
    except RoboflowError as error:
        raise PreflightError(f"--upload-to {upload_to}: {error}") from None
