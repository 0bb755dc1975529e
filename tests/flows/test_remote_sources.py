"""The labeling flow on remote sources: an S3 prefix (real S3 protocol, moto's server on
127.0.0.1) with a video among the photos, outputs written back to S3, and labels
re-uploaded to a Roboflow project (the real SDK against the local API stub)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import supervision as sv
from typer.testing import CliRunner

from cli.main import app
from flows.label import label_images
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.labels import OutputLayout, read_images
from tasks.preview import load_record
from tasks.s3 import staging_folder
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def bucket(s3_test_client, sample_photos, tmp_path, monkeypatch):
    """A bucket with three photos and a 2-second video under photos/."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    client = s3_test_client
    client.create_bucket(Bucket="raw")
    for path in sorted(sample_photos.glob("*.jpg"))[:3]:
        client.upload_file(str(path), "raw", f"photos/{path.name}")
    video = tmp_path / "clip.mp4"
    info = sv.VideoInfo(width=160, height=120, fps=10, total_frames=20)
    with sv.VideoSink(str(video), info, codec="mp4v") as sink:
        for i in range(20):
            sink.write_frame(np.full((120, 160, 3), i * 10, dtype=np.uint8))
    client.upload_file(str(video), "raw", "photos/clip.mp4")
    client.create_bucket(Bucket="labels")
    return client


def test_an_s3_prefix_with_a_video_is_labeled_and_exported_back_to_s3(
    bucket, s3_endpoint, tiny_grounding_dino
):
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["person", "rocket"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
        chunk_size=2,
    )
    summary = label_images(
        source="s3://raw/photos",
        out="s3://labels/run1",
        settings=settings,
        sources=SourceOptions(s3_endpoint_url=s3_endpoint, fps=1),
    )

    assert (summary.images, summary.labeled, summary.skipped) == (5, 5, [])
    local = OutputLayout(staging_folder("s3://labels/run1"))
    names = sorted(read_images(local)["relative_path"])
    assert names == [
        "astronaut.jpg",
        "chelsea.jpg",
        "clip_t000000.000s.jpg",
        "clip_t000001.000s.jpg",
        "coffee.jpg",
    ]
    keys = {o["Key"] for o in bucket.list_objects_v2(Bucket="labels")["Contents"]}
    assert {
        "run1/coco/train/_annotations.coco.json",
        "run1/report.md",
        "run1/yolo/data.yaml",
    } <= keys
    assert "run1/coco/train/clip_t000001.000s.jpg" in keys
    assert not [k for k in keys if "/.cache/" in k]  # source images stay local
    coco = json.loads(
        bucket.get_object(
            Bucket="labels", Key="run1/coco/train/_annotations.coco.json"
        )["Body"].read()
    )
    assert len(coco["images"]) == 5


def test_labels_are_reuploaded_to_roboflow_as_one_batch(
    roboflow_api, tiny_grounding_dino, sample_photos, tmp_path, monkeypatch
):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "testkey-flow-1")
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["person", "rocket"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
    )
    summary = label_images(
        source=str(sample_photos),
        out=str(tmp_path / "out"),
        settings=settings,
        upload_to="roboflow://acme/cans",
    )
    assert (summary.upload.uploaded, summary.upload.failed) == (4, [])
    uploads = [r for r in roboflow_api.requests if r.path.endswith("/upload")]
    assert {r.query["batch"][0] for r in uploads} == {f"autolabel {summary.run_id}"}
    assert "Roboflow upload: 4 uploaded" in (tmp_path / "out" / "report.md").read_text()


def test_preview_and_run_take_an_s3_prefix(
    bucket, s3_endpoint, tiny_grounding_dino, tmp_path
):
    """`autolabel preview` and `run --approve` on s3://, as `label` does."""
    out = tmp_path / "out"
    common = ["--s3-endpoint-url", s3_endpoint, "--out", str(out)]
    model = ["--model", tiny_grounding_dino, "--device", "cpu"]
    shown = CliRunner().invoke(
        app,
        ["preview", "s3://raw/photos", "--class", "person", *model, "--sample", "2",
         *common],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    record = load_record(out)
    assert record.source == "s3://raw/photos" and len(record.sample) == 2

    # The stored preview remembers the endpoint: --from needs no --s3-endpoint-url.
    again = CliRunner().invoke(
        app, ["preview", "--from", str(out), "--class", "person: a person"]
    )
    assert again.exit_code == 0, again.output
    assert load_record(out).sample == record.sample  # the same S3 images again
    assert load_record(out).sources.s3_endpoint_url == s3_endpoint

    labeled = CliRunner().invoke(
        app,
        ["run", "s3://raw/photos", "--class", "person", *model, "--approve",
         "--sample", "2", *common],
    )  # fmt: skip
    assert labeled.exit_code == 0, labeled.output
    names = sorted(read_images(OutputLayout(out))["relative_path"])
    assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]  # no --fps: no video


def _keys(client, bucket: str, prefix: str) -> set[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {entry["Key"] for entry in listed}


def test_run_writes_preview_approval_and_batch_to_an_s3_output_and_reuses_it_elsewhere(
    bucket, s3_endpoint, tiny_grounding_dino, tmp_path, monkeypatch
):
    """`run --out s3://...` keeps nothing only on this machine: the preview, the
    approved settings and the batch all reach the bucket, and `--reuse-approved` on a
    machine that never saw the preview labels with them (charged once: one ledger)."""
    ledger = ["--credits-ledger", str(tmp_path / "shared-credits.sqlite")]
    common = ["--s3-endpoint-url", s3_endpoint, "--out", "s3://labels/run2", *ledger]
    model = ["--model", tiny_grounding_dino, "--device", "cpu"]
    first = CliRunner().invoke(
        app,
        ["run", "s3://raw/photos", "--class", "person", "--threshold", "0.2", *model,
         "--approve", "--sample", "2", *common],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "Outputs in s3://labels/run2/" in " ".join(first.output.split())
    keys = _keys(bucket, "labels", "run2/")
    assert {
        "run2/approved.json",
        "run2/preview/summary.md",
        "run2/preview/candidates.parquet",
        "run2/coco/train/_annotations.coco.json",
        "run2/report.md",
    } <= keys, sorted(keys)
    approved = json.loads(
        bucket.get_object(Bucket="labels", Key="run2/approved.json")["Body"].read()
    )
    assert approved["settings"]["thresholds"]["default"] == 0.2

    # Another machine: an empty cache, so no staging folder and no approved.json.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-machine"))
    assert not staging_folder("s3://labels/run2").exists()
    again = CliRunner().invoke(
        app,
        ["run", "s3://raw/photos", "--reuse-approved", "--device", "cpu", *common],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())  # the console wraps long lines
    assert "Reusing the settings" in said
    assert "(s3://labels/run2/approved.json)" in said
    assert "Labeled 3 of 3 images" in said
    assert "; 0 credits." in said  # the first run paid for these images


def test_the_review_page_session_labels_into_an_s3_output(
    bucket, s3_endpoint, tiny_grounding_dino
):
    from review_ui.jobs import (
        ClassRow,
        LabelRequest,
        PreviewRequest,
        ReviewSession,
        RunDefaults,
    )

    session = ReviewSession(
        "s3://labels/page", RunDefaults(device="cpu", sources=SourceOptions(
            s3_endpoint_url=s3_endpoint))
    )  # fmt: skip
    assert session.out == staging_folder("s3://labels/page")
    job = session.start_preview(
        PreviewRequest(
            source="s3://raw/photos",
            classes=[ClassRow(name="person")],
            model=tiny_grounding_dino,
            sample_size=2,
        )
    )
    _wait(job)
    preview = session.preview()
    assert preview is not None and len(preview["images"]) == 2

    job = session.start_labeling(
        LabelRequest(key=preview["key"], thresholds={"person": 0.2})
    )
    _wait(job)
    assert job.result["labeled"] == 3
    keys = _keys(bucket, "labels", "page/")
    assert {
        "page/approved.json",
        "page/coco/train/_annotations.coco.json",
        "page/report.md",
        "page/review/queue.csv",
    } <= keys, sorted(keys)
    assert "page/.autolabel.lock" not in keys  # held while the job ran, then freed

    # Another machine writing the prefix: the page's batch is refused, not mixed in.
    holder = {"pid": 5, "host": "gpu-9", "since": "now", "what": "autolabel run"}
    bucket.put_object(
        Bucket="labels", Key="page/.autolabel.lock", Body=json.dumps(holder)
    )
    refused = session.start_labeling(
        LabelRequest(key=preview["key"], thresholds={"person": 0.3})
    )
    while refused.state == "running":
        time.sleep(0.1)
    assert refused.state == "failed"
    assert "s3://labels/page is being written by 'autolabel run'" in refused.error


def _wait(job, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while job.state == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.state == "done", job.error
