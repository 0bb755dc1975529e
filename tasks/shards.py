"""Scale-out: one parent run splits a batch into shards that GPU workers label, then
merges them once.

The parent plans the chunks, starts ``shards`` runs of the ``label-images`` deployment
(each labels every n-th chunk: ``shard=[i, n]``) on the work pool, watches them, and
starts a shard again when its run crashed, failed, went silent (its worker died: no
heartbeat or other event for ``stale_after_s``) or overran ``shard_timeout_s``. Once
every shard is done it exports, checks and reports once (``finish_run``).

Nothing is labeled or charged twice, however often a shard runs: chunk shards are named
by their content and settings and written atomically, so a rerun skips the chunks a
dead run finished, and the credit ledger charges an image once per dataset, model and
task. Results land in the output folder, which every worker must reach at the same path
(a shared volume), or under an s3:// prefix: then each shard run puts its chunk shards
there and the parent pulls them (``tasks.shard_store``); no disk is shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.credits import CreditAccount
from tasks.label import Chunk, ImageSelection
from tasks.labels import OutputLayout
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions, localize

DEFAULT_SHARD_DEPLOYMENT = "label-images/label-shard"
_WATCHED = frozenset({"PENDING", "RUNNING", "CANCELLING"})  # must show signs of life
Verdict = Literal["done", "wait", "failed", "lost", "too-slow", "cancelled"]


class ShardsFailed(RuntimeError):
    """Some shard did not finish within its attempts; the message lists them."""


@dataclass(frozen=True)
class ShardPolicy:
    """When a shard's run counts as lost, and how often it is started again.

    Defaults suit Prefect's default flow heartbeat (every 180 s): a run is lost after
    ``stale_after_s`` without a heartbeat or any other event of its own (its state
    changes, its task runs). With a faster heartbeat on the workers
    (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 30 s at least) it can be lower, but keep
    it above the longest quiet stretch of a healthy run (a model import, a chunk).
    """

    max_attempts: int = 3
    shard_timeout_s: float = 6 * 3600.0
    stale_after_s: float = 600.0
    poll_interval_s: float = 5.0


@dataclass(frozen=True)
class RunStatus:
    """What the parent needs to know about one shard run."""

    state_type: str  # a prefect StateType value: SCHEDULED, RUNNING, COMPLETED, ...
    state_name: str
    started_at: datetime | None
    state_since: datetime | None
    last_event_at: datetime | None = None


def judge(status: RunStatus, now: datetime, policy: ShardPolicy) -> Verdict:
    """What to do about a shard run in ``status``.

    done: finished. wait: queued, or running with recent signs of life. failed: ended
    Failed or Crashed (start it again). lost: Pending or Running without any sign of
    life for ``stale_after_s`` (its worker or machine died: start it again).
    too-slow: running longer than ``shard_timeout_s``. cancelled: someone cancelled
    it (the parent stops: a person meant it).
    """
    kind = status.state_type
    if kind == "COMPLETED":
        return "done"
    if kind in ("FAILED", "CRASHED"):
        return "failed"
    if kind == "CANCELLED":
        return "cancelled"
    if kind in ("SCHEDULED", "PAUSED"):
        return "wait"  # waiting for a free worker is not a failure
    signs = [t for t in (status.state_since, status.last_event_at) if t is not None]
    if signs and (now - max(signs)).total_seconds() > policy.stale_after_s:
        return "lost"
    started = status.started_at
    if started is not None and (now - started).total_seconds() > policy.shard_timeout_s:
        return "too-slow"
    return "wait"


class ShardApi(Protocol):
    """The Prefect calls the supervisor makes (a fake one in unit tests)."""

    def submit(self, index: int, attempt: int) -> UUID: ...

    def status(self, run_id: UUID) -> RunStatus: ...

    def give_up(self, run_id: UUID, verdict: Verdict, message: str) -> None: ...


@dataclass
class ShardRecord:
    """One shard's runs, oldest first, and how the last one ended."""

    index: int
    runs: list[UUID] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def attempts(self) -> int:
        return len(self.runs)


def supervise_shards(
    api: ShardApi,
    count: int,
    policy: ShardPolicy,
    *,
    log: Callable[[str], None] = print,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    sleep: Callable[[float], None] = time.sleep,
) -> list[ShardRecord]:
    """Start ``count`` shard runs and see each through to a completed run.

    A run judged failed, lost or too slow is marked (Crashed / Cancelling, so the UI
    and a still-living worker agree) and its shard started again as a new run, at most
    ``policy.max_attempts`` runs per shard.

    Raises:
        ShardsFailed: If a shard used up its attempts or a person cancelled one.
    """
    records = [ShardRecord(index) for index in range(count)]
    for record in records:
        record.runs.append(api.submit(record.index, 1))
    while not all(record.done for record in records):
        sleep(policy.poll_interval_s)
        for record in records:
            if record.done:
                continue
            run_id = record.runs[-1]
            verdict = judge(api.status(run_id), clock(), policy)
            if verdict == "wait":
                continue
            record.verdicts.append(verdict)
            if verdict == "done":
                record.done = True
                continue
            if verdict == "cancelled":
                raise ShardsFailed(
                    f"shard {record.index + 1}/{count}: run {run_id} was cancelled"
                )
            if record.attempts >= policy.max_attempts:
                api.give_up(run_id, verdict, f"{verdict}; no attempts left")
                raise ShardsFailed(
                    f"shard {record.index + 1}/{count}: {record.attempts} run(s) "
                    f"({', '.join(record.verdicts)}); last run {run_id}"
                )
            api.give_up(run_id, verdict, f"{verdict}: the shard is started again")
            new_id = api.submit(record.index, record.attempts + 1)
            log(
                f"shard {record.index + 1}/{count}: run {run_id} {verdict}; "
                f"started again as run {new_id} (attempt {record.attempts + 1})"
            )
            record.runs.append(new_id)
    return records


class PrefectShardApi:
    """``ShardApi`` over run_deployment and the Prefect client."""

    def __init__(
        self,
        deployment: str,
        parameters: Callable[[int], dict[str, Any]],
        *,
        run_key: str,
        count: int,
    ) -> None:
        self.deployment = deployment
        self.parameters = parameters
        self.run_key = run_key
        self.count = count

    def submit(self, index: int, attempt: int) -> UUID:
        from prefect.deployments import run_deployment

        run = run_deployment(
            name=self.deployment,
            parameters=self.parameters(index),
            timeout=0,
            flow_run_name=f"shard {index + 1} of {self.count} (attempt {attempt})",
            tags=["autolabel-shard"],
            # A retried parent task must not start a second run of the same attempt.
            idempotency_key=f"{self.run_key}-shard-{index}-of-{self.count}-{attempt}",
        )
        return run.id

    def status(self, run_id: UUID) -> RunStatus:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
            state = run.state
            since = run.start_time or run.created
            watched = state is not None and state.type.value in _WATCHED
            last = _last_event_at(client, run_id, since) if watched and since else None
        return RunStatus(
            state_type=state.type.value if state else "SCHEDULED",
            state_name=state.name if state else "Scheduled",
            started_at=run.start_time,
            state_since=state.timestamp if state else None,
            last_event_at=last,
        )

    def give_up(self, run_id: UUID, verdict: Verdict, message: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling, Crashed

        if verdict in ("failed", "cancelled"):
            return  # already final
        # Lost: nobody is left to report, so say it. Too slow: a living worker sees
        # Cancelling and stops the process; the shard runs elsewhere meanwhile.
        state = (
            Crashed(message=message)
            if verdict == "lost"
            else Cancelling(message=message)
        )
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, state, force=True)


def _last_event_at(client: Any, run_id: UUID, since: datetime) -> datetime | None:
    """When the run last gave a sign of life: a heartbeat, a state change, a task."""
    from prefect.events.filters import (
        EventAnyResourceFilter,
        EventFilter,
        EventOccurredFilter,
        EventOrder,
    )

    page = client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=since - timedelta(seconds=5)),
            any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
            order=EventOrder.DESC,
        ),
        limit=1,
    )
    return page.events[0].occurred if page.events else None


def shard_parameters(
    *,
    source: str,
    out: str,
    settings: LabelSettings,
    chunks: list[Chunk],
    count: int,
    credits: CreditAccount | None,
    quality: str,
    sources: SourceOptions | None,
    selection: ImageSelection | None,
) -> Callable[[int], dict[str, Any]]:
    """The ``label-images`` parameters of each shard, as JSON values.

    Every shard must cut the batch into the same chunks as the parent. With
    ``only_new``, a shard starting after another one finished chunks would see fewer
    new images and cut differently, so the parent pins its own list of images.
    """
    if selection is not None and selection.only_new:
        selection = ImageSelection(
            images=[ref.uri for chunk in chunks for ref in chunk.refs]
        )
    base: dict[str, Any] = {
        "source": source,
        "out": out,
        "settings": settings.model_dump(mode="json"),
        "quality": quality,
    }
    if credits is not None:
        base["credits"] = credits.model_dump(mode="json", by_alias=True)
    if sources is not None:
        base["sources"] = sources.model_dump(mode="json")
    if selection is not None:
        base["selection"] = selection.model_dump(mode="json")
    return lambda index: {**base, "shard": [index, count]}


def shared_budget(credits: CreditAccount | None) -> CreditAccount | None:
    """``credits`` with a per-run budget turned into the same cap on the dataset.

    Each shard is its own run, so a per-run budget would let every shard spend it
    again. The dataset may instead spend ``max_credits`` more than it had spent when
    the parent started (runs of the same dataset at the same time share that cap).
    """
    if credits is None or credits.max_credits is None:
        return credits
    if credits.budget_scope != "run":
        return credits
    spent = credits.ledger().used(credits.dataset)
    return credits.model_copy(
        update={
            "max_credits": round(spent + credits.max_credits, 9),
            "budget_scope": "dataset",
        }
    )


shared_budget_task = task(shared_budget, name="shared-budget", cache_policy=NO_CACHE)


def missing_chunks(out: str, chunks: list[Chunk]) -> list[str]:
    """Keys of planned chunks whose label or image shard is not in ``out``."""
    layout = OutputLayout(out)
    return [
        chunk.key
        for chunk in chunks
        if not all(path.exists() for path in layout.shard_paths(chunk.key))
    ]


@task(name="run-shards", cache_policy=NO_CACHE)
def run_shards_task(
    deployment: str,
    parameters: Callable[[int], dict[str, Any]],
    count: int,
    policy: ShardPolicy,
    run_key: str,
) -> list[ShardRecord]:
    """Start the shard runs on the work pool and see them through (see module doc)."""
    logger = get_run_logger()
    api = PrefectShardApi(deployment, parameters, run_key=run_key, count=count)
    records = supervise_shards(api, count, policy, log=logger.warning)
    create_table_artifact(
        key="label-sharded-shards",
        table=[
            {
                "shard": record.index + 1,
                "attempts": record.attempts,
                "runs": ", ".join(str(run) for run in record.runs),
                "ended": ", ".join(record.verdicts),
            }
            for record in records
        ],
        description="Shard runs of this batch; a shard started again after its run "
        "crashed, failed or went silent has several runs.",
    )
    return records


def fetch_source_images(
    out: str, chunks: list[Chunk], sources: SourceOptions | None
) -> int:
    """Local copies, in ``out``'s cache, of the remote images of the labeled chunks.

    The exports copy every image; with workers that share no disk, the copies the
    shards fetched stay on their machines, so the parent fetches its own (with the
    run's S3 endpoint). Cached images and local sources cost nothing. Returns how
    many remote images have a local copy.
    """
    missing = set(missing_chunks(out, chunks))
    refs = [ref for chunk in chunks if chunk.key not in missing for ref in chunk.refs]
    local = localize(refs, out, sources or SourceOptions())
    return sum(1 for ref in local if ref.local_path and not ref.problem)


fetch_source_images_task = task(
    fetch_source_images, name="fetch-source-images", cache_policy=NO_CACHE
)


@task(name="check-shards-merged", cache_policy=NO_CACHE)
def check_merged_task(
    out: str, chunks: list[Chunk], credits: CreditAccount | None
) -> str | None:
    """Every planned chunk must be in ``out`` now; returns a budget-stop message.

    A shard run refused by the budget ends Completed without its last chunks; any
    other gap means a shard run did not write where the parent reads (e.g. an output
    folder that is not shared between the workers: an s3:// output needs none).
    """
    missing = missing_chunks(out, chunks)
    if not missing:
        return None
    if credits is not None and credits.max_credits is not None:
        return (
            f"budget {credits.max_credits:g} credits reached: {len(missing)} of "
            f"{len(chunks)} chunk(s) not labeled"
        )
    raise ShardsFailed(
        f"{len(missing)} of {len(chunks)} chunk(s) missing in {out} after every shard "
        f"completed (e.g. {missing[0]}): do all workers write to the same folder? "
        "(workers without a shared disk: use an s3:// output)"
    )
