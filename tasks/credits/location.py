"""Where the credit ledger lives: an SQLite file, or a PostgreSQL database URL.

The location is a flow parameter (``CreditAccount.ledger_path``), shown in the Prefect
UI and sent to every shard run, so a database URL travels WITHOUT its password. The
password comes, on each machine, from (first found):

1. this process, when it resolved the full URL itself (``--credits-ledger`` with a
   password, the environment variable or the Secret block);
2. ``AUTOLABEL_CREDITS_LEDGER`` or the Prefect Secret block ``autolabel-credits-ledger``
   holding the same URL with its password (how workers and pods get it);
3. libpq's own places: ``PGPASSWORD``, ``~/.pgpass`` (psycopg reads them).

Where no ledger is configured, ``AUTOLABEL_CREDITS_LEDGER`` and then the Secret block
(asked only when a Prefect server is configured: looking it up must not start one)
name it; otherwise it is ``OUT/credits.sqlite``.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

LEDGER_FILE_NAME = "credits.sqlite"
LEDGER_ENV = "AUTOLABEL_CREDITS_LEDGER"
LEDGER_SECRET_BLOCK = "autolabel-credits-ledger"
_DATABASE_SCHEMES = ("postgresql", "postgres")
# "postgresql://..." or what pathlib makes of it ("postgresql:/..."): a CLI option
# typed as a Path collapses the double slash.
_DATABASE_URL = re.compile(r"^(postgresql|postgres):/+(.*)$", re.DOTALL)

_passwords: dict[str, str] = {}  # URL without password -> password (this process)
_passwords_guard = threading.Lock()


class LedgerLocationError(ValueError):
    """A ledger location that cannot be used; the message is one line, redacted."""


class LedgerUnavailable(RuntimeError):
    """The ledger database cannot be reached or refused us; one redacted line."""


def is_database_url(location: str | Path) -> bool:
    return _DATABASE_URL.match(str(location)) is not None


def resolve_ledger_path(
    out: str | Path, configured: str | Path | None = None
) -> Path | str:
    """The ledger: the configured one, ``AUTOLABEL_CREDITS_LEDGER``, the Prefect
    Secret block, or ``OUT/credits.sqlite`` (the embedded default).

    A file is returned as a Path, a database as its URL without the password (the
    password is kept for this process, see the module doc). One ledger per output
    folder means another output folder starts from zero: point every run at one
    shared ledger to book all runs of a dataset together.
    """
    chosen = configured or os.environ.get(LEDGER_ENV) or _secret_ledger()
    if not chosen:
        return Path(out) / LEDGER_FILE_NAME
    if is_database_url(chosen):
        return remember_password(str(chosen))
    return Path(chosen).expanduser()


def remember_password(url: str) -> str:
    """``url`` without its password; the password is kept for this process's
    connections to that database."""
    public, password = split_password(url)
    if password is not None:
        with _passwords_guard:
            _passwords[public] = password
    return public


def connection_url(public: str) -> str:
    """The URL to connect with: ``public`` plus the password this machine has for it
    (none found: libpq looks in PGPASSWORD and ~/.pgpass itself)."""
    public, given = split_password(public)
    if given is not None:
        return with_password(public, given)
    with _passwords_guard:
        known = _passwords.get(public)
    if known is None:
        for candidate in (os.environ.get(LEDGER_ENV), _secret_ledger()):
            if candidate and is_database_url(candidate):
                found_public, found = split_password(str(candidate))
                if found_public == public and found is not None:
                    known = found
                    break
    return public if known is None else with_password(public, known)


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` (normalised, ``postgresql://``) without its password, and the password
    (from the user-info part or a ``password=`` query parameter), or None."""
    match = _DATABASE_URL.match(url.strip())
    if match is None:
        raise LedgerLocationError("not a postgresql:// URL")
    parts = urlsplit(f"postgresql://{match.group(2)}")
    password = unquote(parts.password) if parts.password is not None else None
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = value
        else:
            query.append((key, value))
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username is not None:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    public = urlunsplit(("postgresql", netloc, parts.path, urlencode(query), ""))
    return public, password


def with_password(public: str, password: str) -> str:
    """``public`` with ``password`` in its user-info part."""
    parts = urlsplit(public)
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def shown_location(location: str | Path) -> str:
    """The ledger as messages and artifacts name it: a file's name, or the database
    URL without any password."""
    if is_database_url(location):
        try:
            return split_password(str(location))[0]
        except ValueError:
            return "postgresql://***"
    return Path(location).name


def redact(text: str) -> str:
    """``text`` without URL passwords or key-like query values, for messages and
    artifacts (a dataset may be named by a URL that carries an API key)."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    return re.sub(
        r"(?i)([?&;](?:api[_-]?key|key|token|secret|password|signature|sig)=)[^&#\s]*",
        r"\1***",
        text,
    )


def one_line(error: BaseException) -> str:
    """An error message on one line, without any URL password in it."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return redact(text) or type(error).__name__


def _secret_ledger() -> str | None:
    """The Secret block's URL, where a Prefect server is configured (a lookup without
    one would start a temporary server just to find nothing)."""
    api_url = os.environ.get("PREFECT_API_URL") or _profile_api_url()
    return _secret_ledger_on(api_url) if api_url else None


@functools.lru_cache(maxsize=8)
def _secret_ledger_on(api_url: str) -> str | None:
    """The block's value on the server at ``api_url``, looked up once per process
    (a changed block is seen by processes started after the change)."""
    try:
        from prefect.blocks.system import Secret  # here: prefect is heavy to import

        value = Secret.load(LEDGER_SECRET_BLOCK, _sync=True).get()
    except Exception:  # no block, or the server is away: no ledger from it
        return None
    return str(value) if value else None


def _profile_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None
