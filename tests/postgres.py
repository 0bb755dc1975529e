"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, started on a
temporary data folder and a free port on 127.0.0.1, stopped (and its folder removed)
afterwards. One server per test session; each test gets its own fresh database.

Where the server binaries are missing, the tests skip and say so, unless
AUTOLABEL_REQUIRE_POSTGRES is set (``scripts/test.sh`` sets it after
``scripts/install_postgres.sh``): then they fail, so CI never passes silently without
them. ``initdb`` refuses to run as root: as root the server runs as the ``postgres``
user, on a folder it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "autolabel"
PASSWORD = "s3cr3t-pw"  # asserted absent from every message and artifact
REQUIRE_ENV = "AUTOLABEL_REQUIRE_POSTGRES"


@dataclass(frozen=True)
class PostgresServer:
    port: int

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL (with the password)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    return (
        ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command
    )


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server; stop it and remove its data folder on exit."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = (
            "PostgreSQL server not installed (no initdb): run "
            "scripts/install_postgres.sh"
        )
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="autolabel-pg-"))  # not under pytest's 0700
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        shutil.chown(password_file, "postgres")
    root.chmod(0o700)
    port = _free_port()
    log = root / "server.log"
    try:
        subprocess.run(
            _as_server_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),  # fmt: skip
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={sockets} -c max_connections=100 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            _as_server_user(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),  # fmt: skip
            check=True,
            capture_output=True,
            timeout=90,
        )
        yield PostgresServer(port)
    except subprocess.CalledProcessError as error:
        details = (error.stderr or b"").decode(errors="replace")
        if log.exists():
            details += log.read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start: {details[-2000:]}") from None
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                ),  # fmt: skip
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh empty database for one test: its URL, password included."""
    return postgres_server.create_database()
