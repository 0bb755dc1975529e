"""The one Roboflow client: the API key, retries, redaction, error types.

Every Roboflow feature (a project as a source, the re-upload of labels, hosted models)
goes through here, so that each gets the same key lookup and the same protection. What
the official SDK lacks is added once:

- Retries with exponential backoff on 408/429/5xx answers and dropped connections
  (the SDK raises at once), ``Retry-After`` honoured up to a cap; other failures fail
  at once.
- Redaction of the API key. The SDK puts the key into every request URL; ``requests``
  puts URLs into its error messages and urllib3 logs them at DEBUG level. So no error
  text of ``requests`` is ever passed on (only its type or the answer's status and
  redacted body), every other message is redacted, errors are raised outside ``except``
  blocks (no exception chain to leak through), and a filter on urllib3's loggers blanks
  keys out of log records.
- One API key lookup: ``ROBOFLOW_API_KEY``, then the Prefect Secret block
  ``roboflow-api-key``, then the SDK's own config (``roboflow login``).

Below ``tasks/`` and ``model_loaders/``, this module imports neither, and nothing heavy
at import time: ``requests``, ``roboflow`` and ``prefect`` load on first use, so that
importing a model loader stays light.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

SCHEME = "roboflow://"
SECRET_BLOCK = "roboflow-api-key"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_REASON_CHARS = 300
T = TypeVar("T")
logger = logging.getLogger(__name__)


class RoboflowError(RuntimeError):
    """Roboflow failed us; neither the message nor ``reason`` ever holds the key.

    ``reason`` is the last failure alone (``HTTP 503: ...``), for reports that already
    say what was attempted.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


class RoboflowAccessError(RoboflowError):
    """Roboflow cannot be used at all: a bad target, no key, a project not opened."""


class RoboflowRequestError(RoboflowError):
    """A request failed for good: not retryable, or still failing after retries."""


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

    def __str__(self) -> str:
        return f"{SCHEME}{self.workspace}/{self.project}"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable failure is retried."""

    attempts: int = 5  # in all, the first try included
    backoff_s: float = 1.0  # doubles per retry
    max_wait_s: float = 30.0  # cap, Retry-After included

    def wait_s(self, retry: int, retry_after: str | None) -> float:
        """Seconds before retry number ``retry`` (0-based): the server's word first."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_wait_s)
            except ValueError:  # an HTTP date: fall back to our own backoff
                pass
        return min(self.backoff_s * 2**retry, self.max_wait_s)


def resolve_api_key(workspace: str | None = None) -> str:
    """The API key: ``ROBOFLOW_API_KEY``, the Prefect Secret block, the SDK's config.

    The Secret block is how deployments hold the key (no key in a worker's
    environment); the SDK's config is what ``roboflow login`` writes, for ``workspace``
    (or its default workspace).
    """
    key = (
        os.environ.get("ROBOFLOW_API_KEY") or _secret_block_key() or _sdk_key(workspace)
    )
    if not key:
        raise RoboflowAccessError(
            "no Roboflow API key: set ROBOFLOW_API_KEY, create a Prefect Secret block "
            f"named {SECRET_BLOCK!r}, or run `roboflow login`"
        )
    return key


def _secret_block_key() -> str | None:
    try:
        from prefect.blocks.system import Secret  # here: prefect is heavy to import

        return Secret.load(SECRET_BLOCK, _sync=True).get()
    except Exception:  # no block, or no Prefect server: try the next place
        return None


def _sdk_key(workspace: str | None) -> str | None:
    try:
        from roboflow.config import load_roboflow_api_key

        return load_roboflow_api_key(workspace)
    except Exception:  # an unreadable config is no key
        return None


class RoboflowClient:
    """One API key's access to Roboflow through the SDK, retried and redacted.

    Creating one registers its key with the log filter, so urllib3's debug logs of
    every later request (from any thread) show ``***`` instead.
    """

    def __init__(
        self,
        api_key: str,
        *,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, so shared safely)
    ) -> None:
        self._api_key = api_key
        self.retry = retry
        _KEY_FILTER.protect(api_key)

    @classmethod
    def resolve(
        cls,
        api_key: str | None = None,
        *,
        workspace: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, so shared safely)
    ) -> RoboflowClient:
        """A client for ``api_key``, or for the key ``resolve_api_key`` finds."""
        return cls(api_key or resolve_api_key(workspace), retry=retry)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_key=***)"

    def call(
        self,
        function: Callable[[], T],
        *,
        what: str,
        error: type[RoboflowError] = RoboflowRequestError,
    ) -> T:
        """``function()`` under this client's retry policy; see ``with_retries``."""
        return with_retries(
            function, what=what, retry=self.retry, error=error, secret=self._api_key
        )

    def sdk(self) -> Any:
        """The SDK's ``Roboflow`` object (its constructor checks the key: POST /)."""
        import roboflow

        return roboflow.Roboflow(api_key=self._api_key)

    def open_project(self, target: RoboflowTarget) -> Any:
        """The SDK's project of ``target``; failures raise ``RoboflowAccessError``."""
        return self.call(
            lambda: self.sdk().project(f"{target.workspace}/{target.project}"),
            what=f"open {target}",
            error=RoboflowAccessError,
        )

    def download_version(
        self,
        target: RoboflowTarget,
        version: int,
        *,
        model_format: str,
        location: Path,
    ) -> Path:
        """Download version ``version`` of ``target``'s project as ``model_format``
        (e.g. ``coco``) and unzip it into ``location``; returns ``location``.

        A version still being generated is refused at once: the SDK's ``download``
        would poll it forever. The SDK's progress bars are kept off the console.
        """
        project = self.open_project(target)
        what = f"download version {version} of {target}"
        found = self.call(
            lambda: project.version(version), what=what, error=RoboflowAccessError
        )
        if self.call(lambda: self._generating(target, version), what=what):
            raise RoboflowRequestError(
                f"cannot {what}: it is still being generated on Roboflow; try again "
                "when it is ready",
                reason="still being generated",
            )
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            self.call(
                lambda: found.download(
                    model_format, location=str(location), overwrite=True
                ),
                what=what,
            )
        return location

    def _generating(self, target: RoboflowTarget, version: int) -> bool:
        """The SDK's own test (``Version.__check_if_generating``), asked once."""
        from roboflow.adapters import rfapi

        info = rfapi.get_version(
            api_key=self._api_key,
            workspace_url=target.workspace,
            project_url=target.project,
            version=str(version),
            nocache=True,
        ).get("version", {})
        return bool(info.get("generating") or info.get("images", 0) == 0)

    def describe(self, error: Exception) -> str:
        """Why ``error`` happened, safe to show: for per-item failure reports."""
        if isinstance(error, RoboflowError):
            return error.reason
        return _classify(error, self._api_key).reason


def with_retries(
    function: Callable[[], T],
    *,
    what: str,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, so shared safely)
    error: type[RoboflowError] = RoboflowRequestError,
    secret: str = "",
) -> T:
    """``function()``, retried on 408/429/5xx and dropped connections.

    Every failure becomes ``error("cannot WHAT[ after N attempts]: REASON")``, raised
    outside the ``except`` block so that it carries no exception (and so no URL with a
    key) as its cause or context. ``secret`` is redacted from every reason; a call
    without a key (a signed download URL) passes none.
    """
    for attempt in range(1, retry.attempts + 1):
        outcome = _attempt(function, secret)
        if not isinstance(outcome, _Failure):
            return outcome
        if not outcome.retryable or attempt == retry.attempts:
            after = f" after {attempt} attempts" if attempt > 1 else ""
            raise error(
                f"cannot {what}{after}: {outcome.reason}", reason=outcome.reason
            )
        wait = retry.wait_s(attempt - 1, outcome.retry_after)
        logger.warning("cannot %s: %s; retrying in %.1f s", what, outcome.reason, wait)
        time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass(frozen=True)
class _Failure:
    reason: str  # safe to show: no URL, no key
    retryable: bool
    retry_after: str | None = None


def _attempt(function: Callable[[], T], secret: str) -> T | _Failure:
    try:
        return function()
    except Exception as failure:  # classified, never passed on as it is
        return _classify(failure, secret)


def _classify(failure: BaseException, secret: str) -> _Failure:
    """What went wrong, worded without the text of ``requests`` (it holds the URL)."""
    import requests

    if isinstance(failure, requests.HTTPError):
        response = failure.response
        if response is None:
            return _Failure("HTTP error without a response", retryable=False)
        return _Failure(
            _with_status(response.status_code, redact(response.text, secret)),
            retryable=response.status_code in RETRYABLE_STATUS,
            retry_after=response.headers.get("Retry-After"),
        )
    if isinstance(failure, (requests.ConnectionError, requests.Timeout)):
        return _Failure(f"{type(failure).__name__} (network)", retryable=True)
    if isinstance(failure, requests.RequestException):
        return _Failure(type(failure).__name__, retryable=False)
    if isinstance(failure, zipfile.BadZipFile):  # the SDK saves an error page as
        return _Failure(  # a version's zip: its download checks no status
            "the download is not a zip file (an error answer?)", retryable=True
        )
    text = redact(str(failure), secret)
    status = getattr(failure, "status_code", None)  # the SDK's RoboflowError family
    if isinstance(status, int):
        return _Failure(
            _with_status(status, text), retryable=status in RETRYABLE_STATUS
        )
    cause = failure.__cause__ or failure.__context__
    if isinstance(cause, requests.RequestException):  # the SDK wraps dropped
        return _classify(cause, secret)  # connections, with the URL in its text
    return _Failure(text or type(failure).__name__, retryable=False)


def _with_status(status: int, text: str) -> str:
    return f"HTTP {status}" + (f": {text}" if text else "")


def redact(text: str, secret: str) -> str:
    """``text`` on one line, without ``secret`` (as is or URL-encoded), capped.

    The key is replaced before the text is cut, so that no cut can leave a piece of it.
    """
    return _blank(" ".join(text.split()), secret)[:MAX_REASON_CHARS]


def _blank(text: str, secret: str) -> str:
    if secret:
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, "***")
    return text


class _RedactKeys(logging.Filter):
    """Blanks API keys out of records: urllib3 logs each request's URL at DEBUG level,
    and the SDK puts the key in every URL."""

    LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.connection")

    def __init__(self) -> None:
        super().__init__()
        self.keys: frozenset[str] = frozenset()

    def protect(self, key: str) -> None:
        """Redact ``key`` from now on; the filter joins urllib3's loggers only now,
        not at import (``addFilter`` adds it once)."""
        if key:
            self.keys = self.keys | {key}  # rebound whole: safe for readers in threads
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        message = blanked = record.getMessage()
        for key in self.keys:
            blanked = _blank(blanked, key)
        if blanked != message:
            record.msg, record.args = blanked, None
        return True


_KEY_FILTER = _RedactKeys()
