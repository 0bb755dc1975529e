"""A sharded batch across "machines" that share no disk: the output is an s3:// prefix
(moto's S3 server), the credit ledger a real PostgreSQL server, and each of the two
workers has its own working directory and scratch folder. One worker is killed
(SIGKILL) mid-shard; every image still ends up once in the exports and is charged
once in PostgreSQL.

Its own module: it replaces the stack's workers with workers that carry the S3 and
ledger settings in their environment, as Kubernetes Secrets would give them."""

from __future__ import annotations

import json
import subprocess
import time

from tasks.credits import CreditLedger, resolve_ledger_path
from tasks.label import plan_chunks
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.s3 import S3Location, list_keys, s3_client
from tasks.settings import build_settings
from tasks.shard_store import pull_shards
from tasks.sources import SourceOptions
from tests.deployments.conftest import (
    BIN,
    PrefectStack,
    _wait_workers_polling,
    start_worker,
    stop,
)
from tests.deployments.test_deployments import EIGHT_PHOTOS, RUN_TIMEOUT_S
from tests.photos import write_sample_photos
from tests.postgres import PASSWORD

pytest_plugins = ["tests.postgres"]  # postgres_url: a fresh database

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _wait_for_a_pushed_chunk(stack, worker: str, shards, client, out: str) -> str:
    """Once a shard run of ``worker`` has put a chunk on S3: that run's id."""
    from prefect.client.orchestration import get_client

    prefix = S3Location.parse(out).prefix
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as prefect:
        while time.monotonic() < deadline:
            pushed = set(list_keys(f"{out}/images/", client=client))
            for run_id in stack.workers[worker].submitted():
                shard = prefect.read_flow_run(run_id).parameters.get("shard")
                if shard is None:
                    continue
                index, _ = shard
                mine = {f"{prefix}/images/chunk-{key}.parquet" for key in shards[index]}
                if mine & pushed:
                    return run_id
            time.sleep(0.2)
    raise AssertionError(f"{worker} put no chunk on S3")


def test_a_sharded_batch_into_s3_with_a_postgres_ledger_survives_a_dying_worker(
    prefect_api, tiny_grounding_dino, s3_endpoint, postgres_url, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    stack: PrefectStack = prefect_api
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    client = s3_client(s3_endpoint)
    # Buckets of its own: the S3 server is shared by the whole session.
    for bucket in ("sharded-raw", "sharded-out"):
        client.create_bucket(Bucket=bucket)
    for photo in write_sample_photos(tmp_path / "photos", EIGHT_PHOTOS):
        client.upload_file(str(photo), "sharded-raw", f"photos/{photo.name}")
    source, out = "s3://sharded-raw/photos", "s3://sharded-out/batch"
    settings = build_settings(
        classes=["person", "cup"],
        thresholds=["0.2"],
        chunk_size=1,
        model=dict(
            model=tiny_grounding_dino, device="cpu", dtype="auto", batch_size=2,
            prompt_mode="joint",
        ),
    )  # fmt: skip
    keys = [
        chunk.key
        for chunk in plan_chunks(
            source,
            settings,
            str(tmp_path / "planning"),
            SourceOptions(s3_endpoint_url=s3_endpoint),
        )
    ]
    shards = [keys[index::4] for index in range(4)]

    # The module's workers share this machine's disk: replaced by two that do not.
    # Each gets the S3 credentials and the full ledger URL (password included) from
    # its environment; the shard parameters carry the URL without the password.
    for name in list(stack.workers):
        stop(stack.workers.pop(name).process)
    for name in ("worker-a", "worker-b"):
        stack.workers[name] = start_worker(
            stack,
            name,
            home=tmp_path / name,
            **S3_ENV,
            XDG_CACHE_HOME=str(tmp_path / name / "cache"),
            AUTOLABEL_CREDITS_LEDGER=postgres_url,
        )
    _wait_workers_polling(stack, timeout_s=60)

    parent = subprocess.Popen(
        [
            str(BIN / "autolabel"),
            "label-sharded",
            source,
            "--out",
            out,
            "--s3-endpoint-url",
            s3_endpoint,
            "--credits-ledger",
            postgres_url,
            "--shards",
            "4",
            "--model",
            tiny_grounding_dino,
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--chunk-size",
            "1",
            "--class",
            "person",
            "--class",
            "cup",
            "--threshold",
            "0.2",
            "--stale-after",
            "30",
            "--poll-interval",
            "1",
        ],  # fmt: skip
        cwd=tmp_path,
        env=stack.env(TQDM_DISABLE="1", XDG_CACHE_HOME=str(tmp_path / "parent")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        killed_run = _wait_for_a_pushed_chunk(stack, "worker-b", shards, client, out)
        stack.workers["worker-b"].kill()
        output, _ = parent.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, output
    assert "Labeled 8 of 8 images" in output and "0.08 credits" in output, output
    assert PASSWORD not in output

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["autolabel-shard"])
            )
        )
    assert {run.parameters["out"] for run in runs} == {out}
    assert all(PASSWORD not in json.dumps(run.parameters) for run in runs)
    by_worker = {n: set(w.submitted()) for n, w in stack.workers.items()}
    assert all(by_worker.values()), f"both workers took shards: {by_worker}"
    rerun = sum(run.state.is_crashed() for run in runs)
    assert rerun >= 1, "a shard of the dead worker ran again"
    assert killed_run in by_worker["worker-b"]

    # The outputs are on S3 only: read them back into a fresh folder.
    merged = tmp_path / "merged"
    assert pull_shards(out, merged, client=client) == 2 * len(keys)
    layout = OutputLayout(merged)
    images = read_images(layout)
    assert sorted(images["relative_path"]) == sorted(f"{n}.jpg" for n in EIGHT_PHOTOS)
    assert images["image_id"].is_unique
    reused = images[images["run_id"] == killed_run]
    assert len(reused) >= 1, "the chunk the dead worker put on S3 was reused"
    coco_key = "batch/coco/train/_annotations.coco.json"
    coco = json.loads(
        client.get_object(Bucket="sharded-out", Key=coco_key)["Body"].read()
    )
    assert (len(coco["images"]), len(coco["annotations"])) == (
        8,
        len(read_labels(layout)),
    )
    report = client.get_object(Bucket="sharded-out", Key="batch/report.md")[
        "Body"
    ].read()
    assert PASSWORD.encode() not in report

    # Every image charged once, in PostgreSQL, to one of the shard runs.
    ledger = CreditLedger(resolve_ledger_path("unused", postgres_url)).rows()
    assert sorted(ledger["image_id"]) == sorted(images["image_id"])
    assert set(ledger["run_id"]) <= {str(run.id) for run in runs}
    # No worker wrote where another (or the parent) reads: scratch folders only.
    for name in ("worker-a", "worker-b"):
        scratch = tmp_path / name / "cache" / "autolabel" / "outputs"
        assert scratch.is_dir() and not (tmp_path / name / "labels").exists()
