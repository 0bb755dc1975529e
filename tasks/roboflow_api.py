"""Access to the Roboflow API through the official SDK: targets, the API key, retries.

What the SDK lacks is added here once, for every Roboflow feature (ingest, re-upload,
hosted models): retries with backoff on 429/5xx and dropped connections (the SDK raises
at once), and redaction of the API key, which the SDK puts into request URLs and so into
connection-error messages and urllib3's debug logs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

SCHEME = "roboflow://"
SECRET_BLOCK = "roboflow-api-key"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


class RoboflowAccessError(RuntimeError):
    """Roboflow cannot be used (bad target, no key); the message never holds the key."""


@dataclass(frozen=True)
class RoboflowTarget:
    """``roboflow://WORKSPACE/PROJECT`` plus, where allowed, one more part (a batch)."""

    workspace: str
    project: str
    extra: str | None = None

    @classmethod
    def parse(cls, uri: str, *, extra: str | None = None) -> RoboflowTarget:
        """Parse ``uri``; ``extra`` names the optional third part, if one is allowed."""
        parts = uri[len(SCHEME) :].split("/") if uri.startswith(SCHEME) else []
        allowed = (2, 3) if extra else (2,)
        if len(parts) not in allowed or not all(parts):
            shape = "roboflow://WORKSPACE/PROJECT"
            if extra:
                shape += f"[/{extra.upper()}]"
            raise RoboflowAccessError(f"{uri!r}: expected {shape}")
        return cls(*parts)


def resolve_api_key() -> str:
    """ROBOFLOW_API_KEY, else the Prefect Secret block ``roboflow-api-key``."""
    key = os.environ.get("ROBOFLOW_API_KEY")
    if key:
        return key
    try:
        from prefect.blocks.system import Secret

        return Secret.load(SECRET_BLOCK, _sync=True).get()
    except Exception:  # no block, or no Prefect server: same advice either way
        raise RoboflowAccessError(
            "no Roboflow API key: set ROBOFLOW_API_KEY or create a Prefect "
            "Secret block "
            f"named {SECRET_BLOCK!r}"
        ) from None


class _RedactingFilter(logging.Filter):
    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redact(record.getMessage()), ()
        return True


@contextmanager
def redacted_http_logs(redact: Callable[[str], str]) -> Iterator[None]:
    """urllib3 logs request URLs at DEBUG, and the SDK puts the key into them."""
    loggers = [
        logging.getLogger(name) for name in ("urllib3.connectionpool", "urllib3")
    ]
    redacting = _RedactingFilter(redact)
    for logger in loggers:
        logger.addFilter(redacting)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redacting)


def open_project(destination: RoboflowTarget, key: str, redact: Callable[[str], str]):
    import roboflow

    try:
        return roboflow.Roboflow(api_key=key).project(
            f"{destination.workspace}/{destination.project}"
        )
    except Exception as error:
        raise RoboflowAccessError(
            f"cannot open roboflow://{destination.workspace}/{destination.project}: "
            f"{redact(failure_reason(error))}"
        ) from None


def retrying(attempts: int, backoff_seconds: float) -> Callable[[Callable[[], T]], T]:
    """Call a function, retrying with exponential backoff on errors worth retrying."""

    def call(function: Callable[[], T]) -> T:
        for attempt in range(attempts):
            try:
                return function()
            except Exception as error:
                if attempt == attempts - 1 or not _retryable(error):
                    raise
                time.sleep(backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    return call


def _retryable(error: Exception) -> bool:
    status = getattr(error, "status_code", None)
    if status is None:  # the SDK wraps dropped connections without a status
        return True
    return int(status) in RETRYABLE_STATUS


def failure_reason(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    text = str(error) or type(error).__name__
    return f"HTTP {status}: {text}" if status else text


def redactor(secret: str) -> Callable[[str], str]:
    def redact(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    return redact
