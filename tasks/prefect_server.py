"""The temporary Prefect server dies with the process that started it.

Without PREFECT_API_URL, Prefect 3 starts a temporary local server
(``prefect.server.api.server.SubprocessASGIServer``: ``python -m uvicorn ...
prefect.server.api.server:create_app`` as a plain ``subprocess.Popen``) and stops it
from an ``atexit`` hook. A ``kill -9`` (or an OOM kill) of the parent skips ``atexit``
and leaves the server running as an orphan.

``ensure_server_dies_with_this_process()``, called once at the start of a command,
starts a tiny watchdog process and marks this process's environment with a token
(``AUTOLABEL_SERVER_OWNER``), which every child started later inherits (Prefect builds
the server's environment from ``os.environ``). The watchdog waits for this process to
end (a pidfd, else polling its parent pid), then kills every temporary Prefect server
that carries the token and whose parent does not (it was orphaned: reparented to init
or a subreaper). On a normal exit Prefect has already stopped its server and the
watchdog finds nothing. Servers of child processes that are still alive keep running.

Why not ``PR_SET_PDEATHSIG`` on the server: Linux sends that signal when the *thread*
that forked the child ends, not the process, and Prefect may start the server from a
worker thread (``autolabel run`` runs its flow in a thread), which would kill a live
server; Prefect also gives no hook for a ``preexec_fn`` short of patching a private
method. The watchdog needs no change to Prefect.

A no-op when PREFECT_API_URL is set (a real server, not ours to stop) and off Linux.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid

TOKEN_ENV = "AUTOLABEL_SERVER_OWNER"
SERVER_MARK = "prefect.server.api.server:create_app"

_watchdog: subprocess.Popen | None = None


def _api_url_configured() -> bool:
    if os.environ.get("PREFECT_API_URL"):
        return True
    try:  # a profile (``prefect config set PREFECT_API_URL=...``) counts too
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    except Exception:  # noqa: BLE001 - no Prefect settings: no server of ours either
        return False


def ensure_server_dies_with_this_process() -> subprocess.Popen | None:
    """Make any temporary Prefect server started from now on die with this process.

    Call once, early, before the first flow runs (before the server starts). Returns
    the watchdog process, or None when nothing was needed (PREFECT_API_URL set, not
    Linux) or it was already started by this process. Safe to call more than once.
    """
    global _watchdog
    if not sys.platform.startswith("linux") or _api_url_configured():
        return None
    if _watchdog is not None and _watchdog.poll() is None:
        return None
    token = uuid.uuid4().hex
    os.environ[TOKEN_ENV] = token
    _watchdog = subprocess.Popen(
        [
            sys.executable,
            "-I",
            os.path.abspath(__file__),
            "--watch",
            str(os.getpid()),
            token,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # its own session: a Ctrl-C to the terminal's group does not stop it early
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env={k: v for k, v in os.environ.items() if k != TOKEN_ENV},
    )
    return _watchdog


# --- the watchdog side ---------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _carries_token(pid: int, token: str) -> bool:
    return f"{TOKEN_ENV}={token}".encode() in _read(f"/proc/{pid}/environ").split(b"\0")


def _parent_of(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    try:  # the command name (field 2) may hold spaces: split after its ')'
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (ValueError, IndexError):
        return None


def orphaned_servers(token: str) -> list[int]:
    """Temporary Prefect servers that carry ``token`` and whose parent does not."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        if SERVER_MARK.encode() not in _read(f"/proc/{pid}/cmdline"):
            continue
        if not _carries_token(pid, token):
            continue
        parent = _parent_of(pid)
        if parent is not None and _carries_token(parent, token):
            continue  # its parent (a child of ours) still lives and owns it
        found.append(pid)
    return found


def _wait_for_exit(pid: int) -> None:
    import select
    import time

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while os.getppid() == pid:
        time.sleep(0.2)


def _kill(pids: list[int], grace: float = 3.0) -> None:
    import signal
    import time

    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and not _zombie(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    try:
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z"
    except ValueError:
        return True


def watch(parent: int, token: str) -> None:
    """Wait until ``parent`` ends, then kill its orphaned temporary servers."""
    if os.getppid() == parent:
        _wait_for_exit(parent)
    _kill(orphaned_servers(token))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        watch(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: python tasks/prefect_server.py --watch PARENT_PID TOKEN")
