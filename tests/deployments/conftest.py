"""A real Prefect deployment setup on 127.0.0.1 for one test module: `prefect server`,
the `autolabel` process work pool, every deployment of deployments/prefect.yaml
(`prefect deploy --all`, as the README says) and two `prefect worker start` processes,
all killed with the module. Each has its own PREFECT_HOME under a temporary folder."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "autolabel"
# Fast enough for a test, slow enough for a loaded 2-core machine.
WORKER_ENV = {
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # the minimum Prefect allows
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}


_T0 = time.monotonic()


def _log_time(what: str) -> None:
    print(f"[deployments] {time.monotonic() - _T0:6.1f}s {what}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_env(home: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Prefect subprocess: no PREFECT_* of ours leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal ``process`` and everything it started (flow runs run in new sessions)."""
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is left, children included."""
    if process.poll() is None:
        kill_tree(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s)
    kill_tree(process)
    process.wait()


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    def submitted(self) -> list[str]:
        """Flow run ids this worker started, from its own log."""
        marker = f"Worker '{self.name}' submitting flow run '"
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [part.split("'", 1)[0] for part in text.split(marker)[1:]]

    def kill(self) -> None:
        """The machine dies: the worker and its flow runs, no goodbye (SIGKILL)."""
        kill_tree(self.process)
        self.process.wait()


@dataclass
class PrefectStack:
    api_url: str
    root: Path
    workers: dict[str, Worker] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return prefect_env(self.root / "client-home", self.api_url, **extra)

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        """Run a console script of this venv (prefect, autolabel) against the server."""
        result = subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            cwd=REPO,
            env=self.env(**WORKER_ENV),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy in {timeout_s}s")


def start_worker(
    stack: PrefectStack, name: str, *, home: Path | None = None, **env: str
) -> Worker:
    """A worker of the stack's pool. ``home``: a worker as on its own machine, with
    its own working directory and Prefect home there (default: the repository and
    the stack's folder); ``env``: more environment for it."""
    if home is not None:
        home.mkdir(parents=True)
    log = (home or stack.root) / f"{name}.log"
    process = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            POOL,
            "--name",
            name,
            "--limit",
            "2",
        ],  # fmt: skip
        cwd=home or REPO,
        env=prefect_env(
            (home or stack.root) / f"{name}-home", stack.api_url, **WORKER_ENV, **env
        ),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Worker(name, process, log)


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory) -> Iterator[PrefectStack]:
    """Server + pool + deployments + workers 'worker-a' and 'worker-b'."""
    root = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_log = root / "server.log"
    server = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],  # fmt: skip
        env=prefect_env(
            root / "server-home",
            PREFECT_API_DATABASE_CONNECTION_URL=(
                f"sqlite+aiosqlite:///{root / 'server.sqlite'}"
            ),
            PREFECT_UI_ENABLED="false",
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
            # Not needed here; less load on a small machine.
            PREFECT_SERVER_SERVICES_FOREMAN_ENABLED="false",
            PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
            PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED="false",
        ),
        stdout=server_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack = PrefectStack(api_url, root)
    try:
        _wait_healthy(api_url, server, server_log, timeout_s=90)
        _log_time("server healthy")
        _create_pool(api_url)  # as `prefect work-pool create autolabel --type process`
        for name in ("worker-a", "worker-b"):  # start while deploying: saves time
            stack.workers[name] = start_worker(stack, name)
        stack.cli(
            "prefect", "--no-prompt", "deploy", "--all",
            "--prefect-file", "deployments/prefect.yaml",
        )  # fmt: skip
        _log_time("deployed")
        _wait_workers_polling(stack, timeout_s=60)
        _log_time("workers polling")
        yield stack
    finally:
        for worker in stack.workers.values():
            stop(worker.process)
        stop(server)


def _create_pool(api_url: str) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate

    with SyncPrefectClient(api_url) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))


def _wait_workers_polling(stack: PrefectStack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = {n: w.log.read_text(errors="replace") for n, w in stack.workers.items()}
        if all(f"Worker '{n}' started" in log for n, log in logs.items()):
            return
        time.sleep(0.5)
    raise RuntimeError("workers did not start:\n" + "\n".join(logs.values()))


@pytest.fixture
def prefect_api(prefect_stack):
    """This process's Prefect client settings pointed at the stack's server."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    with temporary_settings(
        {
            PREFECT_API_URL: prefect_stack.api_url,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        }
    ):
        yield prefect_stack
