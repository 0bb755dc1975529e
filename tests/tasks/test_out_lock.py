"""One run per output folder: OUT/.autolabel.lock, with real processes contending."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.out_lock import LOCK_NAME, OutFolderLocked, hold_out_lock, read_owner
from tests.lock_holder import HOLDER, start_holder

ROOT = Path(__file__).resolve().parents[2]


def test_lock_creates_folder_records_owner_and_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "not" / "there" / "yet"
    with hold_out_lock(out, "autolabel label") as lock:
        assert lock == out / LOCK_NAME
        assert lock.is_file()
        data = json.loads(lock.read_text())
        assert data["pid"] == os.getpid()
        assert data["host"] == socket.gethostname()
        assert data["what"] == "autolabel label"
        assert data["since"]
    assert not (out / LOCK_NAME).exists()
    assert out.is_dir()


def test_lock_is_released_on_exception(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="boom"),
        hold_out_lock(tmp_path, "autolabel label"),
    ):
        raise ValueError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with hold_out_lock(tmp_path, "autolabel label"):  # free again
        pass


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with hold_out_lock(tmp_path, "autolabel run"):
        with hold_out_lock(tmp_path, "flow autolabel"):
            assert (tmp_path / LOCK_NAME).exists()
        assert (tmp_path / LOCK_NAME).exists()  # the outer hold still holds
        assert read_owner(tmp_path).what == "autolabel run"
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_process_is_refused_with_a_one_line_message(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        with (
            pytest.raises(OutFolderLocked) as caught,
            hold_out_lock(tmp_path, "autolabel preview"),
        ):
            pytest.fail("entered a folder another process holds")
        message = str(caught.value)
        assert "\n" not in message
        assert str(tmp_path.resolve()) in message
        assert f"pid {holder.pid}" in message
        assert socket.gethostname() in message
        assert "autolabel label" in message
        assert "--out" in message
        assert caught.value.holder.pid == holder.pid
        # The refused run left the holder's lock file alone.
        assert read_owner(tmp_path).pid == holder.pid
    finally:
        holder.terminate()
        holder.wait(10)


def test_lock_is_removed_when_the_holder_exits(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", HOLDER.replace("time.sleep(60)", "pass"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "held"
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_after_kill_9_is_taken_over(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    stale = read_owner(tmp_path)
    assert stale is not None and stale.pid == holder.pid  # the file stayed behind
    with hold_out_lock(tmp_path, "autolabel label"):
        assert read_owner(tmp_path).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_from_another_host_is_not_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    owner = {"pid": 4242, "host": "other-box", "since": "2024-01-01T00:00:00+00:00"}
    lock.write_text(json.dumps({**owner, "what": "autolabel label"}))
    with (
        pytest.raises(OutFolderLocked) as caught,
        hold_out_lock(tmp_path, "autolabel label"),
    ):
        pytest.fail("took over another host's lock")
    message = str(caught.value)
    assert "\n" not in message
    assert "other-box" in message and "pid 4242" in message
    assert f"delete {lock.resolve()}" in message
    assert json.loads(lock.read_text())["host"] == "other-box"  # left as it was
    lock.unlink()  # what the message says to do
    with hold_out_lock(tmp_path, "autolabel label"):
        pass


def _contend(out: str, barrier, results) -> None:
    barrier.wait()
    try:
        with hold_out_lock(out, "autolabel label"):
            results.put(("held", os.getpid()))
            time.sleep(1.0)
    except OutFolderLocked:
        results.put(("refused", os.getpid()))


def test_many_processes_at_once_exactly_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 6
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_contend, args=(str(tmp_path), barrier, results))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60)[0] for _ in range(n)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert outcomes.count("held") == 1, outcomes
    assert outcomes.count("refused") == n - 1, outcomes
    assert not (tmp_path / LOCK_NAME).exists()
