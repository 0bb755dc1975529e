"""Re-upload to Roboflow with the real roboflow SDK against a local stub of its API:
every image arrives exactly once with its annotation, through injected 429/5xx answers
and dropped connections, a rerun uploads nothing new, and the API key never shows up
anywhere."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as coco_mask

from clients.roboflow import RoboflowAccessError
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.export_images import ExportImage
from tasks.label import label_chunk, plan_chunks
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.masks import mask_to_rle
from tasks.roboflow_upload import (
    _polygons_only,
    image_annotation,
    upload_to_roboflow,
)
from tasks.settings import LabelSettings
from tasks.splits import ROBOFLOW_FOLDERS, Splits
from tasks.thresholds import Thresholds

API_KEY = "testkey-do-not-leak-42"
CLASSES = ["person", "rocket"]


@pytest.fixture
def stub(roboflow_api):
    return roboflow_api


@pytest.fixture(scope="module")
def labeled_once(tmp_path_factory, tiny_grounding_dino):
    """An output folder labeled by the real pipeline (plain functions, no Prefect)."""
    from tests.conftest import write_sample_photos

    source = tmp_path_factory.mktemp("photos")
    write_sample_photos(source)
    (source / "copy").mkdir()
    (source / "copy" / "rocket.jpg").write_bytes((source / "rocket.jpg").read_bytes())
    out = tmp_path_factory.mktemp("out")
    settings = LabelSettings(
        ontology=Ontology.from_class_options(CLASSES),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
        thresholds=Thresholds(default=0.5),
    )
    for chunk in plan_chunks(str(source), settings):
        label_chunk(chunk, settings, str(out), "run-1")
    return out


@pytest.fixture
def labeled_out(labeled_once, tmp_path):
    """A fresh copy per test: the upload ledger lives in the output folder."""
    shutil.copytree(labeled_once, tmp_path / "out")
    return str(tmp_path / "out")


def _upload(out, **options):
    return upload_to_roboflow(
        out,
        "roboflow://acme/cans",
        CLASSES,
        batch_name="autolabel run-1",
        tags=["model:tiny", "run:run-1"],
        api_key=API_KEY,
        backoff_seconds=0.01,
        **options,
    )


def test_every_image_arrives_once_with_its_boxes(stub, labeled_out):
    summary = _upload(labeled_out)

    assert (summary.uploaded, summary.skipped, summary.failed) == (4, 1, [])
    # The byte-identical copy of rocket.jpg is the same content: uploaded once.
    assert len(stub.images) == 4
    uploads = [r for r in stub.requests if r.path.endswith("/upload")]
    assert all(r.query["batch"] == ["autolabel run-1"] for r in uploads)
    assert all(r.query["tag"] == ["model:tiny", "run:run-1"] for r in uploads)
    assert {f["split"] for f in stub.images.values()} == {b"train"}

    labels = read_labels(OutputLayout(labeled_out))
    manifest = read_images(OutputLayout(labeled_out))
    for roboflow_id, fields in stub.images.items():
        (annotation,) = stub.annotations[roboflow_id]
        coco = json.loads(annotation["annotationFile"])
        name = fields["name"].decode()
        source_uri = manifest.loc[manifest["relative_path"] == name, "source_uri"].iloc[
            0
        ]
        expected = labels[labels["source_uri"] == source_uri]
        assert coco["images"][0]["file_name"] == name
        assert [c["name"] for c in coco["categories"]] == CLASSES
        assert len(coco["annotations"]) == len(expected)
        assert sorted(a["bbox"][0] for a in coco["annotations"]) == pytest.approx(
            sorted(expected["x_min"])
        )


def test_each_image_goes_to_its_own_split(stub, labeled_out):
    manifest = read_images(OutputLayout(labeled_out))
    # A seed under which these few images land in both splits.
    splits = next(
        candidate
        for seed in range(100)
        if len(
            {(candidate := Splits.parse("train=0.5,val=0.5", seed=seed)).split_of(i)
             for i in manifest["image_id"]}
        ) == 2
    )  # fmt: skip
    summary = _upload(labeled_out, splits=splits)
    assert summary.uploaded == len(stub.images) == 4
    expected = {
        name: ROBOFLOW_FOLDERS[splits.split_of(image_id)].encode()
        for name, image_id in zip(
            manifest["relative_path"], manifest["image_id"], strict=True
        )
    }
    got = {f["name"].decode(): f["split"] for f in stub.images.values()}
    assert len(got) == 4 and all(expected[name] == split for name, split in got.items())
    assert {b"train", b"valid"} <= set(got.values())  # both splits occur


def test_retries_through_429_5xx_and_dropped_connections_then_a_rerun_uploads_nothing(
    stub, labeled_out, tmp_path
):
    stub.fail_next("upload", 500, 429, "drop", 503)
    stub.fail_next("annotate", 502, "drop")

    first = _upload(labeled_out)

    assert first.failed == []
    assert len(stub.images) == 4
    assert all(len(stub.annotations[i]) == 1 for i in stub.images)

    calls_before = len(stub.requests)
    second = _upload(labeled_out)
    assert (second.uploaded, second.skipped, second.failed) == (0, 5, [])
    new_calls = stub.requests[calls_before:]
    assert not [r for r in new_calls if "upload" in r.path or "annotate" in r.path]


def test_a_rerun_after_a_failed_annotation_only_sends_the_annotation(stub, labeled_out):
    stub.fail_next("annotate", *[500] * 3)
    first = _upload(labeled_out, attempts=3)
    assert len(first.failed) == 1 and first.failed[0][1].startswith("HTTP 500")

    second = _upload(labeled_out, attempts=3)
    assert (second.uploaded, second.failed) == (1, [])
    assert len(stub.images) == 4  # the image itself was not sent again
    assert all(len(stub.annotations[i]) == 1 for i in stub.images)


def test_the_api_key_never_appears_in_output_logs_or_errors(
    stub, labeled_out, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    stub.fail_next("upload", *["drop"] * 10)
    summary = _upload(labeled_out, attempts=2)
    assert summary.failed  # connection errors carry the request URL, key included
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text + repr(summary)
    assert API_KEY not in everything
    assert "api_key=***" in caplog.text  # urllib3 logs the URLs, redacted


@pytest.mark.parametrize(
    "target",
    ["roboflow://acme", "s3://acme/cans", "roboflow:///cans", "roboflow://a/b/c"],
)
def test_bad_targets_are_refused(labeled_out, target):
    with pytest.raises(
        RoboflowAccessError, match="expected roboflow://WORKSPACE/PROJECT"
    ):
        upload_to_roboflow(
            labeled_out, target, CLASSES, batch_name="b", tags=[], api_key="k"
        )


def test_no_api_key_is_a_clear_error(labeled_out, monkeypatch):
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    monkeypatch.setattr("prefect.blocks.system.Secret.load", _no_block)
    with pytest.raises(RoboflowAccessError, match="set ROBOFLOW_API_KEY"):
        upload_to_roboflow(
            labeled_out, "roboflow://a/b", CLASSES, batch_name="b", tags=[]
        )


def _no_block(*args, **kwargs):
    raise ValueError("no such block")


def test_masks_go_up_as_polygons_that_redraw_them():
    """A segmentation label (with a hole) reaches Roboflow as COCO polygons that
    pycocotools draws back into the very same mask, under its class's name."""
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:25, 8:32] = True
    mask[12:18, 15:22] = False  # the hole
    row = dict(
        image_id="img", source_uri="/data/sub/a.jpg", width=40, height=30,
        class_name="rocket", class_id=1, prompt="rocket", confidence=0.9,
        x_min=8.0, y_min=5.0, x_max=32.0, y_max=25.0,
        mask=json.dumps(mask_to_rle(mask)), model="m", run_id="r",
    )  # fmt: skip
    box_only = {**row, "class_name": "person", "class_id": 0, "mask": None}
    labels = pd.DataFrame([row, box_only])
    image = ExportImage("sub/a.jpg", "/data/sub/a.jpg", 40, 30, 1, labels)

    coco = json.loads(image_annotation(image, CLASSES)["rawText"])

    annotation, box = coco["annotations"]
    assert box["segmentation"] == []
    polygons = annotation["segmentation"]
    assert isinstance(polygons, list) and polygons
    drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, 30, 40)))
    assert (drawn.astype(bool) == mask).all()
    assert annotation["area"] == int(mask.sum())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert names[annotation["category_id"]] == "rocket"
    assert coco["images"][0]["file_name"] == "a.jpg"


def test_a_mask_as_rle_goes_up_as_its_outlines():
    """Where polygons cannot redraw a mask exactly, the COCO export keeps the RLE;
    Roboflow gets the outlines instead (its importer is not known to read RLE)."""
    mask = np.zeros((30, 40), dtype=bool)
    mask[4:26, 6:30] = True
    rle = mask_to_rle(mask)
    polygons = _polygons_only({"size": rle["size"], "counts": rle["counts"]})
    drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, 30, 40)))
    overlap = (drawn.astype(bool) & mask).sum() / (drawn.astype(bool) | mask).sum()
    assert overlap > 0.9
    assert _polygons_only(None) == [] and _polygons_only([]) == []


def test_images_in_the_review_queue_go_up_tagged_needs_review(stub, labeled_out):
    from tasks.review_queue import QUEUE_COLUMNS, review_dir

    names = sorted(read_images(OutputLayout(labeled_out))["relative_path"])
    queued = names[0]
    review_dir(labeled_out).mkdir()
    (review_dir(labeled_out) / "queue.csv").write_text(
        ",".join(QUEUE_COLUMNS) + f"\n1,{queued},1,no_labels,0\n"
    )
    summary = _upload(labeled_out)
    assert summary.uploaded == 4
    tags = {
        fields["name"].decode(): request.query["tag"]
        for request, fields in zip(
            [r for r in stub.requests if r.path.endswith("/upload")],
            stub.images.values(),
            strict=True,
        )
    }
    assert len(tags) == 4 and queued in tags
    for name, got in tags.items():
        review = ["needs-review"] if name == queued else []
        assert got == ["model:tiny", "run:run-1", *review], name
