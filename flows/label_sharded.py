"""The label-sharded flow: plan chunks -> shard runs on the work pool -> merge once.

The parent plans the chunks, starts ``shards`` runs of the ``label-images`` deployment
on the work pool (see ``tasks.shards`` for how lost runs are found and started again),
and once every shard is done exports, checks and reports once (``finish_run``). The
output is a folder every worker sees, or an s3:// prefix that the shards put their
chunk shards under and the parent pulls them from (``tasks.shard_store``).
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.label import finish_run
from tasks.credits import CreditAccount
from tasks.label import ImageSelection, plan_chunks_task, prune_stale_shards_task
from tasks.report import RunSummary
from tasks.s3 import is_s3, staging_folder
from tasks.settings import LabelSettings
from tasks.shard_store import prune_remote_shards_task, pull_shards_task
from tasks.shards import (
    DEFAULT_SHARD_DEPLOYMENT,
    ShardPolicy,
    check_merged_task,
    fetch_source_images_task,
    run_shards_task,
    shard_parameters,
    shared_budget_task,
)
from tasks.sources import SourceOptions
from tasks.splits import Splits


@flow(
    name="label-sharded",
    description="Label a big batch on several GPU workers: split it into shards, run "
    "each as a label-images deployment run, start lost shards again, merge once.",
)
def label_sharded(
    source: str,
    out: str,
    settings: LabelSettings,
    shards: int = 4,
    deployment: str = DEFAULT_SHARD_DEPLOYMENT,
    credits: CreditAccount | None = None,
    quality: Literal["warn", "fail"] = "warn",
    sources: SourceOptions | None = None,
    upload_to: str | None = None,
    selection: ImageSelection | None = None,
    max_attempts: int = 3,
    shard_timeout_s: float = 6 * 3600.0,
    stale_after_s: float = 600.0,
    poll_interval_s: float = 5.0,
    splits: Splits | None = None,
) -> RunSummary:
    """Label ``source`` into ``out`` with ``shards`` runs of ``deployment``.

    Args:
        source: Folder of images (searched recursively) every worker can read at the
            same path, or s3://bucket/prefix, or roboflow://workspace/project.
        out: Output folder every worker can write at the same path (a shared volume),
            or s3://bucket/prefix: no shared disk, each shard puts its chunk shards
            there and this run merges them.
        settings: Classes and their descriptions, model, thresholds, NMS, chunk size
            (a shard labels whole chunks: use at least as many chunks as shards).
        shards: How many runs to split the batch into (at most one per chunk).
        deployment: The label-images deployment the shards run as (flow/deployment).
        credits: The ledger to charge (every worker must reach it) and a budget.
        quality: warn: quality failures are reported; fail: they fail the run.
        sources: How to reach S3-compatible stores; the frame rate to sample videos.
        upload_to: roboflow://WORKSPACE/PROJECT to upload the merged labels to.
        selection: Label only new images and/or a given list (adds to the output).
        max_attempts: Runs per shard before the parent gives up.
        shard_timeout_s: A shard run still running after this long is cancelled and
            started again.
        stale_after_s: A shard run with no heartbeat or event for this long is
            marked Crashed and started again (its worker died).
        poll_interval_s: Seconds between checks on the shard runs.
        splits: Train/val/test fractions for the exports (by image content hash);
            empty: everything in train, plus a val split where a format needs one.
    """
    if shards < 1 or max_attempts < 1:
        raise ValueError("shards and max_attempts must be at least 1")
    run_id = str(flow_run.get_id() or "local")
    endpoint = (sources or SourceOptions()).s3_endpoint_url
    # An s3:// output: the shards put their chunk shards under the prefix; this run
    # works in a local staging folder and uploads the outputs at the end.
    destination, out = out, str(staging_folder(out)) if is_s3(out) else out
    remote = destination != out
    if remote:  # what earlier runs labeled, for only_new and for reuse
        pull_shards_task(destination, out, None, endpoint)
    chunks = plan_chunks_task(source, settings, out, sources, selection=selection)
    if selection is None or not selection.incremental:
        prune_stale_shards_task(out, chunks)
        if remote:
            prune_remote_shards_task(
                destination, out, [chunk.key for chunk in chunks], endpoint
            )
    account = shared_budget_task(credits)
    count = min(shards, len(chunks))
    parameters = shard_parameters(
        source=source,
        out=destination,
        settings=settings,
        chunks=chunks,
        count=count,
        credits=account,
        quality=quality,
        sources=sources,
        selection=selection,
    )
    policy = ShardPolicy(max_attempts, shard_timeout_s, stale_after_s, poll_interval_s)
    records = (
        run_shards_task(deployment, parameters, count, policy, run_id) if count else []
    )
    if remote:
        pull_shards_task(destination, out, [chunk.key for chunk in chunks], endpoint)
    budget_stop = check_merged_task(out, chunks, account)
    fetch_source_images_task(out, chunks, sources)  # for the exports
    return finish_run(
        out,
        settings,
        run_id,
        destination=destination,
        credits=account,
        quality=quality,
        sources=sources,
        upload_to=upload_to,
        budget_stop=budget_stop,
        charged_runs=[str(run) for record in records for run in record.runs],
        splits=splits,
    )
