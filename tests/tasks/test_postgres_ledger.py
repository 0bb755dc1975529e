"""The credit ledger in a real PostgreSQL server: many processes charging at once
never charge an image twice nor lose a charge; writers that deadlock are run again;
the password stays out of every message; an unreachable database is one line.

(The rules themselves run on both storages in test_credits.py.)"""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from tasks.credits import CreditAccount, CreditLedger, resolve_ledger_path
from tasks.credits.postgres import LedgerUnavailable, PostgresStorage
from tasks.preflight import PreflightError, check_ledger
from tests.postgres import PASSWORD, PostgresServer

pytest_plugins = ["tests.postgres"]  # the postgres_server and postgres_url fixtures

MODEL = "IDEA-Research/grounding-dino-tiny"
PROCESSES = 8


def _image_set(worker: int) -> list[str]:
    """Worker w charges images 30w .. 30w+59: each overlaps its neighbours by half,
    in its own order (reversed for odd workers)."""
    ids = [f"img{n:04d}" for n in range(30 * worker, 30 * worker + 60)]
    return ids[::-1] if worker % 2 else ids


def _charge_in_process(url: str, worker: int, start, results) -> None:
    ledger = CreditLedger(url)
    start.wait(timeout=60)  # all at once
    for task in ("detect", "segment"):
        result = ledger.charge("ds", f"run-{worker}", MODEL, task, _image_set(worker))
        results.put((worker, task, result.newly_charged, result.credits))


def test_eight_processes_charge_overlapping_images_exactly_once(postgres_url: str):
    public = resolve_ledger_path("unused", postgres_url)  # what workers are given
    CreditLedger(public)  # the table exists before the rush
    context = multiprocessing.get_context("fork")  # no connection open to inherit
    start, results = context.Event(), context.Queue()
    processes = [
        context.Process(
            target=_charge_in_process, args=(postgres_url, w, start, results)
        )
        for w in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    start.set()
    reported = [results.get(timeout=120) for _ in range(2 * PROCESSES)]
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * PROCESSES

    ledger = CreditLedger(public)
    rows = ledger.rows()
    unique = {i for w in range(PROCESSES) for i in _image_set(w)}
    assert len(unique) == 30 * PROCESSES + 30
    for task, rate in (("detect", 0.01), ("segment", 0.02)):
        charged = rows[rows["task"] == task]
        assert sorted(charged["image_id"]) == sorted(unique)  # each once, none lost
        # Every run's own count is what it inserted: the per-run totals add up.
        said = {w: (n, c) for w, t, n, c in reported if t == task}
        assert len(said) == PROCESSES
        per_run = charged.groupby("run_id").size()
        for worker, (newly, credits) in said.items():
            assert per_run.get(f"run-{worker}", 0) == newly
            assert credits == pytest.approx(newly * rate)
        assert sum(n for n, _ in said.values()) == len(unique)
    assert rows.groupby(["dataset", "image_id", "model", "task"]).size().max() == 1
    runs = ledger.runs("ds")
    assert runs["images"].sum() == len(rows) == 2 * len(unique)
    assert ledger.used("ds") == pytest.approx(len(unique) * 0.03)


def test_writers_that_deadlock_are_run_again(postgres_url: str):
    """Two transactions inserting the same two keys in opposite orders wait on each
    other; the server aborts one and the ledger runs that one again."""
    storage = PostgresStorage(postgres_url)
    barrier = threading.Barrier(2)
    attempts = {"ab": 0, "ba": 0}
    errors: list[BaseException] = []

    def insert(image: str):
        return (
            "INSERT INTO charges (dataset, image_id, model, task, run_id, credits,"
            " charged_at) VALUES ('ds', ?, 'm', 'detect', 'r', 0.01, 'now')"
            " ON CONFLICT (dataset, image_id, model, task) DO NOTHING",
            (image,),
        )

    def writer(order: str) -> None:
        def work(session) -> None:
            attempts[order] += 1
            session.rows(*insert(order[0]))
            if attempts[order] == 1:
                barrier.wait(timeout=30)  # both hold their first key
            session.rows(*insert(order[1]))

        try:
            storage.write(work)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(o,)) for o in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(attempts.values()) == [1, 2]  # one was aborted and run again
    ledger = CreditLedger(postgres_url)
    assert sorted(ledger.rows()["image_id"]) == ["a", "b"]


def test_the_password_is_in_no_parameter_message_or_error(
    postgres_server: PostgresServer, postgres_url: str, monkeypatch
):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    public = resolve_ledger_path("out", postgres_url)
    account = CreditAccount(ledger_path=public, dataset="d", model=MODEL)

    assert PASSWORD not in account.model_dump_json()  # the flow parameter
    assert account.ledger().name == public
    account.charge(["x"], "run-1")  # this process knows the password
    assert account.ledger().used() == pytest.approx(0.01)

    wrong = postgres_server.url("nope").replace(PASSWORD, "wrong-" + PASSWORD)
    with pytest.raises(LedgerUnavailable) as refused:
        CreditLedger(wrong)
    message = str(refused.value)
    assert PASSWORD not in message and "\n" not in message
    assert "password authentication failed" in message
    assert refused.value.__suppress_context__  # no chained error to print


def test_a_worker_gets_the_password_from_its_environment(
    postgres_url: str, monkeypatch
):
    """A shard run gets the URL without password: the worker's own
    AUTOLABEL_CREDITS_LEDGER (a Kubernetes Secret) supplies it."""
    from tasks.credits import location

    public = resolve_ledger_path("out", postgres_url)
    monkeypatch.setattr(location, "_passwords", {})  # a fresh worker process
    monkeypatch.delenv("AUTOLABEL_CREDITS_LEDGER", raising=False)
    with pytest.raises(LedgerUnavailable, match="no password supplied"):
        CreditLedger(public)

    monkeypatch.setenv("AUTOLABEL_CREDITS_LEDGER", postgres_url)
    assert CreditLedger(public).used() == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:{pw}@127.0.0.1:{port}/db", "Connection refused"),
        ("postgresql://u:{pw}@no-such-host.invalid/db", "no-such-host.invalid"),
    ],
)
def test_an_unreachable_database_is_one_line(url: str, says: str):
    from tests.deployments.conftest import free_port

    url = url.format(pw=PASSWORD, port=free_port())
    with pytest.raises(PreflightError) as refused:
        check_ledger(url)
    message = str(refused.value)
    assert message.startswith("credit ledger postgresql://u@")
    assert says in message
    assert PASSWORD not in message and "\n" not in message
