"""The labeling flow end to end under a real Prefect test server: real photos plus
broken files in, a Parquet label table, COCO, YOLO and a report out, all telling the
same story."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import supervision as sv
import yaml
from prefect.client.orchestration import get_client
from pycocotools.coco import COCO

from flows.label import label_images
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.export_coco import coco_annotations_path
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.tasks.export_folders import read_yolo_tree

pytestmark = pytest.mark.usefixtures("prefect_harness")

CLASSES = ["person", "cup: a coffee cup", "rocket"]


@pytest.fixture
def photo_folder(sample_photos):
    """Four real photos (one in a sub-folder) and three files that are not images."""
    (sample_photos / "more").mkdir()
    (sample_photos / "rocket.jpg").rename(sample_photos / "more" / "rocket.jpg")
    (sample_photos / "empty.jpg").write_bytes(b"")
    (sample_photos / "notes.png").write_text("not an image")
    jpeg = (sample_photos / "coffee.jpg").read_bytes()
    (sample_photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    return sample_photos


def _settings(model_path: str, **overrides) -> LabelSettings:
    return LabelSettings(
        ontology=Ontology.from_class_options(CLASSES),
        model=ModelSpec(model=model_path, device="cpu", batch_size=2),
        thresholds=Thresholds(default=0.3, per_class={"rocket": 0.6}),
        chunk_size=3,
        **overrides,
    )


def test_a_folder_is_labeled_and_every_export_agrees(
    tiny_grounding_dino, photo_folder, tmp_path
):
    out = tmp_path / "out"
    settings = _settings(tiny_grounding_dino)
    summary = label_images(source=str(photo_folder), out=str(out), settings=settings)
    layout = OutputLayout(out)

    # Report: 7 files found, 4 labeled, 3 skipped with their reasons.
    assert (summary.images, summary.labeled) == (7, 4)
    skipped = dict(summary.skipped)
    assert set(skipped) == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert skipped["empty.jpg"] == "empty file (0 bytes)"
    assert skipped["notes.png"] == "not an image (unrecognised format)"
    assert skipped["truncated.jpg"].startswith("corrupt or truncated image")
    report = layout.report.read_text()
    assert "7 found, 4 labeled, 3 skipped" in report
    assert "`truncated.jpg`: corrupt or truncated image" in report

    labels = read_labels(layout)
    assert summary.labels == len(labels) > 0
    assert set(labels["class_name"]) <= {"person", "cup", "rocket"}
    assert labels.loc[labels["class_name"] == "rocket", "confidence"].min() >= 0.6
    assert labels["confidence"].min() >= 0.3
    assert (labels["run_id"] == summary.run_id).all()
    assert labels["source_uri"].str.endswith(".jpg").all()
    cups = labels[labels["class_name"] == "cup"]
    assert len(cups) > 0 and (cups["prompt"] == "a coffee cup").all()

    # COCO: pycocotools reads it; boxes equal the Parquet table's.
    coco_json = coco_annotations_path(layout)  # no split asked: all in train
    coco = COCO(str(coco_json))
    coco.info()
    assert len(coco.getImgIds()) == 4
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "person",
        "cup",
        "rocket",
    ]
    assert len(coco.getAnnIds()) == len(labels)
    for image in coco.loadImgs(coco.getImgIds()):
        relative_path = image["file_name"].replace("__", "/")  # flat names
        rows = labels[labels["source_uri"].str.endswith("/" + relative_path)]
        assert len(rows) == len(coco.getAnnIds(imgIds=image["id"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        coco_boxes = sorted(
            (a["category_id"] - 1, *np.round(a["bbox"], 3)) for a in anns
        )
        table_boxes = sorted(
            (
                int(r.class_id),
                *np.round([r.x_min, r.y_min, r.x_max - r.x_min, r.y_max - r.y_min], 3),
            )
            for r in rows.itertuples()
        )
        assert coco_boxes == table_boxes

    # supervision reads COCO and YOLO back with the same boxes.
    from_coco = sv.DetectionDataset.from_coco(
        images_directory_path=str(coco_json.parent),
        annotations_path=str(coco_json),
    )
    assert from_coco.classes == ["person", "cup", "rocket"]
    assert sum(len(d) for _, _, d in from_coco) == len(labels)
    data_yaml = layout.yolo_dir / "data.yaml"
    names = yaml.safe_load(data_yaml.read_text())["names"]
    assert names == {0: "person", 1: "cup", 2: "rocket"}
    classes, from_yolo = read_yolo_tree(data_yaml)
    assert classes == ["person", "cup", "rocket"]
    # The labeled images, more/rocket.jpg (flat: more__rocket.jpg) included, over the
    # train and valid folders: the loop checks each one.
    assert sorted(from_yolo) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg",
                                 "more__rocket.jpg"]  # fmt: skip
    source_of = pd.read_parquet(layout.export_names).set_index("export_name")
    for name, detections in from_yolo.items():
        rows = labels[labels["source_uri"] == source_of.loc[name, "source_uri"]]
        expected = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        got = detections.xyxy[np.lexsort(detections.xyxy.T[::-1])]
        expected = expected[np.lexsort(expected.T[::-1])]
        np.testing.assert_allclose(got, expected, atol=1.0)


def test_the_flow_run_is_recorded_with_its_tasks(
    tiny_grounding_dino, sample_photos, tmp_path
):
    summary = label_images(
        source=str(sample_photos),
        out=str(tmp_path / "out"),
        settings=_settings(tiny_grounding_dino),
    )
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(summary.run_id)
        assert run.state.is_completed()
        artifacts = client.read_artifacts()
    keys = {a.key: a for a in artifacts}
    assert "autolabel-report" in keys
    assert float(keys["labeling-progress"].data) == 100.0


def test_a_rerun_reuses_finished_chunks_and_other_settings_replace_them(
    tiny_grounding_dino, sample_photos, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    settings = _settings(tiny_grounding_dino)
    label_images(source=str(sample_photos), out=str(out), settings=settings)
    first = read_labels(OutputLayout(out))

    from model_loaders import cache

    def no_model(spec):
        raise AssertionError("a finished chunk must not load the model again")

    monkeypatch.setattr("tasks.label.get_model", no_model)
    label_images(source=str(sample_photos), out=str(out), settings=settings)
    pd.testing.assert_frame_equal(read_labels(OutputLayout(out)), first)

    monkeypatch.setattr("tasks.label.get_model", cache.get_model)
    stricter = settings.model_copy(update={"thresholds": Thresholds(default=0.9)})
    label_images(source=str(sample_photos), out=str(out), settings=stricter)
    relabeled = read_labels(OutputLayout(out))
    assert relabeled["confidence"].min() >= 0.9
    assert len(relabeled) < len(first)
    assert (
        len(read_images(OutputLayout(out))) == 4
    )  # old shards were replaced, not added


def test_only_new_images_are_labeled_and_the_output_grows(
    tiny_grounding_dino, sample_photos, tmp_path, monkeypatch
):
    from tasks.label import ImageSelection

    out = tmp_path / "out"
    later = tmp_path / "later"
    later.mkdir()
    for name in ("rocket.jpg", "chelsea.jpg"):
        (sample_photos / name).rename(later / name)
    settings = _settings(tiny_grounding_dino)
    label_images(source=str(sample_photos), out=str(out), settings=settings)
    first = read_labels(OutputLayout(out))

    for name in ("rocket.jpg", "chelsea.jpg"):  # two new uploads arrive
        (later / name).rename(sample_photos / name)
    labeled: list[str] = []
    from tasks import label as label_module

    real_decode = label_module.decode_with_prefetch

    def recording(refs, **kwargs):
        labeled.extend(ref.relative_path for ref in refs)
        return real_decode(refs, **kwargs)

    monkeypatch.setattr(label_module, "decode_with_prefetch", recording)
    new = ImageSelection(only_new=True)
    summary = label_images(
        source=str(sample_photos), out=str(out), settings=settings, selection=new
    )
    assert sorted(labeled) == ["chelsea.jpg", "rocket.jpg"]
    assert summary.images == 4
    merged = read_labels(OutputLayout(out))
    pd.testing.assert_frame_equal(
        merged[merged["source_uri"].isin(first["source_uri"])].reset_index(drop=True),
        first.reset_index(drop=True),
    )

    labeled.clear()
    again = label_images(
        source=str(sample_photos), out=str(out), settings=settings, selection=new
    )
    assert labeled == [] and again.images == 4  # a second scan finds nothing new


def test_shards_labeled_separately_then_finished_equal_one_run(
    tiny_grounding_dino, sample_photos, tmp_path
):
    from flows.label import finish_run

    settings = _settings(tiny_grounding_dino).model_copy(update={"chunk_size": 1})
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    label_images(source=str(sample_photos), out=str(whole), settings=settings)
    for index in range(3):
        result = label_images(
            source=str(sample_photos),
            out=str(sharded),
            settings=settings,
            shard=(index, 3),
        )
        assert result is None
    finish_run(str(sharded), settings, "parent", destination=str(sharded))
    columns = ["source_uri", "class_name", "confidence", "x_min", "y_max"]
    pd.testing.assert_frame_equal(
        read_labels(OutputLayout(sharded))[columns]
        .sort_values(columns)
        .reset_index(drop=True),
        read_labels(OutputLayout(whole))[columns]
        .sort_values(columns)
        .reset_index(drop=True),
    )
    assert coco_annotations_path(OutputLayout(sharded)).is_file()
