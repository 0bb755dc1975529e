"""The temporary Prefect server dies with its parent, even after ``kill -9``.

Each test starts a real Python process that runs a tiny flow without PREFECT_API_URL
(so Prefect starts its temporary server as a child process) and then sleeps; the test
kills that process with SIGKILL and watches the server process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.prefect_server import (
    SERVER_MARK,
    TOKEN_ENV,
    ensure_server_dies_with_this_process,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc and the watchdog are Linux only"
)

RUN_A_FLOW = """
import sys, time
if sys.argv[1] == "guard":
    from tasks.prefect_server import ensure_server_dies_with_this_process
    assert ensure_server_dies_with_this_process() is not None
from prefect import flow

@flow
def tiny() -> int:
    return 1

assert tiny() == 1
print("ready", flush=True)
time.sleep(120)
"""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    state = _state_and_parent(pid)
    return state is not None and state[0] != "Z"


def servers_started_by(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = _state_and_parent(int(name))
        if (
            info
            and info[1] == parent
            and SERVER_MARK.encode() in _read(f"/proc/{name}/cmdline")
        ):
            found.append(int(name))
    return found


def run_flow_then_sleep(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, int]:
    """Start the flow process; returns it and its temporary server's pid."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", TOKEN_ENV)
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Prefect's default (20 s) is too short for a loaded CI box, as in demo.sh.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PYTHONPATH=str(ROOT),
    )
    errors = tmp_path / "flow-process.stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_A_FLOW, mode],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        pytest.fail(
            f"the flow process did not get ready (exit {proc.returncode}): "
            + errors.read_text()[-2000:]
        )
    servers = servers_started_by(proc.pid)
    assert len(servers) == 1, f"expected one temporary server, found {servers}"
    return proc, servers[0]


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def test_server_dies_after_kill_9_of_its_parent(tmp_path: Path) -> None:
    proc, server = run_flow_then_sleep(tmp_path, "guard")
    try:
        assert alive(server)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_gone(server, 10), f"temporary server {server} outlived its parent"
    finally:
        if alive(server):
            os.kill(server, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_without_the_guard_the_server_is_orphaned(tmp_path: Path) -> None:
    """The control: plain Prefect leaves its server behind after ``kill -9``, so the
    test above would fail without ``ensure_server_dies_with_this_process``."""
    proc, server = run_flow_then_sleep(tmp_path, "plain")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(3)
        assert alive(server), "Prefect now stops its own server: the guard may be moot"
    finally:
        if alive(server):
            os.kill(server, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_normal_exit_stops_the_watchdog_too(tmp_path: Path) -> None:
    code = RUN_A_FLOW.replace("time.sleep(120)", "").replace(
        "assert ensure_server_dies_with_this_process() is not None",
        "w = ensure_server_dies_with_this_process(); print(w.pid, flush=True)",
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", TOKEN_ENV)
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "guard"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    watchdog_pid = int(done.stdout.split()[0])
    assert done.stdout.split()[1] == "ready"
    assert wait_gone(watchdog_pid, 10), "the watchdog outlived a normal exit"


def test_no_op_when_an_api_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert ensure_server_dies_with_this_process() is None
    assert TOKEN_ENV not in os.environ


def test_no_op_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert ensure_server_dies_with_this_process() is None
    assert TOKEN_ENV not in os.environ
