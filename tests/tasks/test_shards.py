"""The sharded parent's decisions without a server: when a shard run counts as lost,
how often it is started again, what each shard is given, and how budgets are shared.
(The real thing, with workers and a killed worker: tests/deployments.)"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest

from model_loaders.ontology import Ontology
from tasks.credits import CreditAccount
from tasks.images import ImageRef
from tasks.label import Chunk, ImageSelection
from tasks.labels import OutputLayout
from tasks.settings import LabelSettings
from tasks.shards import (
    RunStatus,
    ShardPolicy,
    ShardsFailed,
    judge,
    missing_chunks,
    shard_parameters,
    shared_budget,
    supervise_shards,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
POLICY = ShardPolicy(
    max_attempts=3, shard_timeout_s=3600, stale_after_s=60, poll_interval_s=0
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("state", "started", "since", "event", "verdict"),
    [
        ("COMPLETED", ago(100), ago(1), None, "done"),
        ("FAILED", ago(100), ago(1), None, "failed"),
        ("CRASHED", ago(100), ago(1), None, "failed"),
        ("CANCELLED", ago(100), ago(1), None, "cancelled"),
        ("SCHEDULED", None, ago(9999), None, "wait"),  # no free worker yet
        ("PAUSED", ago(100), ago(9999), None, "wait"),
        ("PENDING", None, ago(10), None, "wait"),
        ("PENDING", None, ago(61), None, "lost"),  # taken by a worker that died
        ("RUNNING", ago(500), ago(500), ago(5), "wait"),  # heartbeats arrive
        ("RUNNING", ago(500), ago(500), ago(61), "lost"),  # silent
        ("RUNNING", ago(500), ago(500), None, "lost"),
        ("RUNNING", ago(3601), ago(3601), ago(1), "too-slow"),
        ("CANCELLING", ago(100), ago(61), ago(70), "lost"),
    ],
)
def test_judge(state, started, since, event, verdict):
    status = RunStatus(state, state.title(), started, since, event)
    assert judge(status, NOW, POLICY) == verdict


class FakeApi:
    """Each run id plays a script of statuses, one per poll (the last one repeats)."""

    def __init__(self, scripts: dict[tuple[int, int], list[str]]) -> None:
        self.scripts = scripts  # (shard, attempt) -> state types
        self.runs: dict[UUID, tuple[int, int]] = {}
        self.polls: dict[UUID, int] = {}
        self.given_up: list[tuple[tuple[int, int], str]] = []

    def submit(self, index: int, attempt: int) -> UUID:
        run_id = uuid4()
        self.runs[run_id] = (index, attempt)
        self.polls[run_id] = 0
        return run_id

    def status(self, run_id: UUID) -> RunStatus:
        script = self.scripts[self.runs[run_id]]
        state = script[min(self.polls[run_id], len(script) - 1)]
        self.polls[run_id] += 1
        if state == "SILENT":  # running, but nothing heard for 10 minutes
            return RunStatus("RUNNING", "Running", ago(600), ago(600), ago(600))
        return RunStatus(state, state.title(), ago(5), ago(5), ago(1))

    def give_up(self, run_id: UUID, verdict: str, message: str) -> None:
        self.given_up.append((self.runs[run_id], verdict))


def supervise(api: FakeApi, count: int, policy: ShardPolicy = POLICY):
    return supervise_shards(
        api, count, policy, log=lambda _: None, clock=lambda: NOW, sleep=lambda _: None
    )


def test_lost_and_crashed_shards_run_again_until_done():
    api = FakeApi(
        {
            (0, 1): ["RUNNING", "COMPLETED"],
            (1, 1): ["RUNNING", "CRASHED"],  # its process died; the worker said so
            (1, 2): ["COMPLETED"],
            (2, 1): ["PENDING", "SILENT"],  # its worker died with it
            (2, 2): ["RUNNING", "COMPLETED"],
        }
    )
    records = supervise(api, 3)
    assert [r.attempts for r in records] == [1, 2, 2]
    assert [r.verdicts for r in records] == [
        ["done"],
        ["failed", "done"],
        ["lost", "done"],
    ]
    # Marked before it is replaced, so a living worker stops it and the UI says why.
    assert api.given_up == [((1, 1), "failed"), ((2, 1), "lost")]


def test_a_shard_failing_every_attempt_fails_the_parent():
    api = FakeApi({(0, 1): ["COMPLETED"], **{(1, n): ["FAILED"] for n in (1, 2, 3)}})
    with pytest.raises(
        ShardsFailed, match=r"shard 2/2: 3 run\(s\) \(failed, failed, failed\)"
    ):
        supervise(api, 2)
    assert api.given_up[-1] == ((1, 3), "failed")


def test_a_cancelled_shard_stops_the_parent_without_rerunning():
    api = FakeApi({(0, 1): ["CANCELLED"]})
    with pytest.raises(ShardsFailed, match="cancelled"):
        supervise(api, 1)
    assert list(api.runs.values()) == [(0, 1)]


def _settings() -> LabelSettings:
    return LabelSettings(ontology=Ontology.from_class_options(["cat"]), chunk_size=2)


def _chunks(names: list[str]) -> list[Chunk]:
    refs = [ImageRef(uri=f"/data/{n}", relative_path=n) for n in names]
    return [Chunk(f"k{i}", tuple(refs[i : i + 2])) for i in range(0, len(refs), 2)]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (None, None),
        (ImageSelection(images=["a.jpg"]), {"only_new": False, "images": ["a.jpg"]}),
        # only_new is pinned to the parent's plan: shards must cut the same chunks.
        (
            ImageSelection(only_new=True),
            {
                "only_new": False,
                "images": ["/data/a.jpg", "/data/b.jpg", "/data/c.jpg"],
            },
        ),
    ],
)
def test_each_shard_gets_json_parameters_and_the_same_images(selection, expected):
    account = CreditAccount(ledger_path="/l.sqlite", dataset="d", model="m")
    parameters = shard_parameters(
        source="/data",
        out="/out",
        settings=_settings(),
        chunks=_chunks(["a.jpg", "b.jpg", "c.jpg"]),
        count=2,
        credits=account,
        quality="warn",
        sources=None,
        selection=selection,
    )
    first, second = parameters(0), parameters(1)
    assert (first["shard"], second["shard"]) == ([0, 2], [1, 2])
    assert first.get("selection") == expected
    assert json.loads(json.dumps(first)) == first
    assert LabelSettings.model_validate(first["settings"]) == _settings()
    assert CreditAccount.model_validate(first["credits"]) == account


def test_a_run_budget_becomes_the_same_cap_on_the_dataset(tmp_path):
    account = CreditAccount(
        ledger_path=str(tmp_path / "credits.sqlite"),
        dataset="d",
        model="m",
        max_credits=0.05,
    )
    account.charge(["img-1", "img-2"], "earlier-run")  # 0.02 spent before
    shared = shared_budget(account)
    assert (shared.max_credits, shared.budget_scope) == (0.07, "dataset")
    unlimited = account.model_copy(update={"max_credits": None})
    assert shared_budget(unlimited) is unlimited
    assert shared_budget(None) is None


def test_missing_chunks_are_named(tmp_path):
    chunks = _chunks(["a.jpg", "b.jpg", "c.jpg"])
    layout = OutputLayout(tmp_path)
    for path in layout.shard_paths("k0"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    layout.shard_paths("k2")[0].write_bytes(b"")  # labels without the image manifest
    assert missing_chunks(str(tmp_path), chunks) == ["k2"]


# --- chunk shards on S3 (moto's server on 127.0.0.1) --------------------------------


@pytest.fixture
def s3(s3_test_client):
    client = s3_test_client
    client.create_bucket(Bucket=f"shards-{uuid4().hex[:8]}")
    return client


def _write_chunk(out, key: str) -> None:
    for path in OutputLayout(out).shard_paths(key):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{path.parent.name} {key}".encode())


def test_shards_pushed_by_one_worker_are_pulled_by_another(s3, tmp_path):
    from tasks.s3 import list_keys
    from tasks.shard_store import prune_remote_shards, pull_shards, push_shards

    bucket = s3.list_buckets()["Buckets"][-1]["Name"]
    destination = f"s3://{bucket}/team/batch"
    worker_a, worker_b, parent = (tmp_path / n for n in ("a", "b", "parent"))
    _write_chunk(worker_a, "k0")
    _write_chunk(worker_b, "k1")
    OutputLayout(worker_b).shard_paths("k2")[0].write_bytes(b"labels only")
    assert push_shards(worker_a, destination, "k0", client=s3) == 2
    assert push_shards(worker_b, destination, "k1", client=s3) == 2
    assert push_shards(worker_b, destination, "k2", client=s3) == 0  # not finished
    # Keys that OutputLayout never makes are never pulled (nor deleted).
    s3.put_object(Bucket=bucket, Key="team/batch/labels/chunk-../x.parquet", Body=b"")
    s3.put_object(Bucket=bucket, Key="team/batch/labels/notes.txt", Body=b"")

    assert pull_shards(destination, parent, ["k1"], client=s3) == 2
    assert (OutputLayout(parent).shard_paths("k1")[1]).read_bytes() == b"images k1"
    assert not OutputLayout(parent).shard_paths("k0")[0].exists()
    assert pull_shards(destination, parent, client=s3) == 4
    assert missing_chunks(str(parent), _chunks(["a.jpg", "b.jpg"])) == []
    assert sorted(p.name for p in parent.rglob("*")) == [
        "chunk-k0.parquet", "chunk-k0.parquet", "chunk-k1.parquet",
        "chunk-k1.parquet", "images", "labels",
    ]  # fmt: skip

    # A rerun's push replaces the same key; stale chunks go from the prefix.
    (OutputLayout(worker_a).shard_paths("k0")[1]).write_bytes(b"again")
    push_shards(worker_a, destination, "k0", client=s3)
    assert prune_remote_shards(destination, parent, ["k0"], client=s3) == 2
    left = list_keys(destination, client=s3)
    assert sorted(left) == [
        "team/batch/images/chunk-k0.parquet",
        "team/batch/labels/chunk-../x.parquet",
        "team/batch/labels/chunk-k0.parquet",
        "team/batch/labels/notes.txt",
    ]
    pull_shards(destination, parent, ["k0"], client=s3)
    assert (OutputLayout(parent).shard_paths("k0")[1]).read_bytes() == b"again"


def test_each_shard_run_has_its_own_scratch_folder(monkeypatch, tmp_path):
    from tasks.s3 import staging_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folders = {
        staging_folder("s3://b/p"),
        staging_folder("s3://b/p", (0, 2)),
        staging_folder("s3://b/p", (1, 2)),
    }
    assert len(folders) == 3
    assert staging_folder("s3://b/p", (0, 2)) == staging_folder("s3://b/p", (0, 2))
