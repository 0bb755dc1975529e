"""What the review page is sent: candidates whose in-browser filter is the batch's.

The page keeps a candidate when its score reaches its class's threshold and no kept
suppressor (sent with it) covers it, visiting candidates in the order sent. These tests
run that rule here, in a few lines, on the payload of real previews (tiny model) and
check it against ``filter_candidates`` (the batch's filter) at many thresholds, for each
NMS mode and for masks. The page's JavaScript runs the same rule; the browser test
checks the page against the batch too.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.labels import LABEL_SCHEMA, write_parquet_atomically
from tasks.masks import mask_to_rle
from tasks.preview import (
    PreviewLayout,
    filter_candidates,
    load_record,
    plan_sample,
    read_candidates,
    run_preview,
    save_record,
)
from tasks.review import review_payload, sample_image_jpeg
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.photos import write_sample_photos


def kept_by_page_rule(payload: dict, thresholds: dict[str, float]) -> list[int]:
    """The page's filter (review.js ``keptCandidates``), as plain Python."""
    kept = [False] * len(payload["candidates"])
    for i, c in enumerate(payload["candidates"]):
        kept[i] = c["score"] >= thresholds[c["class"]] and not any(
            kept[j] for j in c["suppressors"]
        )
    return [i for i, k in enumerate(kept) if k]


def _as_keys(rows) -> list[tuple]:
    return sorted(
        (str(r["class"]), round(float(r["score"]), 5), *(round(v, 2) for v in r["box"]))
        for r in rows
    )


def _batch_keys(out: Path, payload: dict, thresholds: dict[str, float]) -> list[tuple]:
    record = load_record(out)
    settings = record.settings
    shown = filter_candidates(
        read_candidates(out),
        Thresholds(per_class=thresholds),
        nms=settings.nms,
        nms_iou=settings.nms_iou,
        class_names=settings.ontology.class_names,
    )
    corners = ["x_min", "y_min", "x_max", "y_max"]
    return _as_keys(
        {
            "class": row["class_name"],
            "score": np.float32(row["confidence"]),
            "box": [float(np.float32(row[c])) for c in corners],
        }
        for _, row in shown.iterrows()
    )


def _set_nms(out: Path, nms: str, iou: float) -> None:
    record = load_record(out)
    settings = record.settings.model_copy(update={"nms": nms, "nms_iou": iou})
    save_record(out, record.model_copy(update={"settings": settings}))


@pytest.fixture(scope="module")
def preview_out(tmp_path_factory: pytest.TempPathFactory, tiny_grounding_dino: str):
    """A real preview (tiny random model, 3 photos): many overlapping candidates."""
    root = tmp_path_factory.mktemp("review-payload")
    photos, out = root / "photos", root / "out"
    write_sample_photos(photos)
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["cat", "person: a person; an astronaut"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
    )
    refs = plan_sample(str(photos), str(out), size=3, seed=1)
    run_preview(
        str(photos), refs, settings, str(out), run_id="t", seed=1, sample_size=3
    )
    return out


@pytest.mark.parametrize(
    ("nms", "iou"), [("class", 0.5), ("agnostic", 0.05), ("none", 0.5), ("class", 0.05)]
)
def test_page_rule_keeps_what_the_batch_keeps(preview_out: Path, nms: str, iou: float):
    """(The tiny random model's boxes sit on a grid and rarely overlap above 0.5, so
    the low IoUs are where suppressors matter.)"""
    _set_nms(preview_out, nms, iou)
    payload = review_payload(str(preview_out))
    scores = sorted({c["score"] for c in payload["candidates"]})
    assert len(payload["candidates"]) > 20  # enough overlap for NMS to matter
    rng = random.Random(0)
    picks = [payload["floor"], 1.0, *rng.sample(scores, 6)]
    for _ in range(12):
        thresholds = {name: rng.choice(picks) for name in payload["class_names"]}
        kept = kept_by_page_rule(payload, thresholds)
        page = [payload["candidates"][i] for i in kept]
        assert _as_keys(page) == _batch_keys(preview_out, payload, thresholds)
    if (nms, iou) != ("none", 0.5) and (nms, iou) != ("class", 0.5):
        # NMS removed something at the floor, so suppressors were exercised
        at_floor = {n: payload["floor"] for n in payload["class_names"]}
        assert len(kept_by_page_rule(payload, at_floor)) < len(payload["candidates"])


def test_payload_lists_images_by_position_with_sizes(preview_out: Path):
    payload = review_payload(str(preview_out))
    names = [image["name"] for image in payload["images"]]
    assert names == sorted(names) and len(names) == 3
    for image in payload["images"]:
        jpeg = sample_image_jpeg(str(preview_out), image["index"])
        with Image.open(io.BytesIO(jpeg)) as served:
            assert served.size == (image["width"], image["height"])
    assert sample_image_jpeg(str(preview_out), 3) is None
    assert sample_image_jpeg(str(preview_out), -1) is None


def test_masks_are_sent_as_polygons_and_suppress_by_mask_overlap(tmp_path: Path):
    """Same boxes, different masks: mask NMS decides, as in the batch (supervision uses
    mask IoU when labels have masks). Two disjoint masks both stay; a third that covers
    the first is suppressed by it, unless the first falls below its threshold."""
    out = tmp_path / "out"
    photo = tmp_path / "photos" / "a.png"
    photo.parent.mkdir()
    Image.new("RGB", (40, 40), "white").save(photo)
    left, right = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    left[5:35, 5:15] = True
    right[5:35, 25:35] = True
    left_ring = left.copy()
    left_ring[15:25, 8:12] = False  # a hole: drawn with the even-odd rule
    rows = [
        ("a", 0.9, left_ring),
        ("a", 0.8, right),
        ("a", 0.7, left),
    ]
    frame = pd.DataFrame(
        [
            dict(
                image_id="img",
                source_uri=str(photo),
                width=40,
                height=40,
                class_name=name,
                class_id=0,
                prompt=name,
                confidence=score,
                x_min=5.0,
                y_min=5.0,
                x_max=35.0,
                y_max=35.0,
                mask=json.dumps(mask_to_rle(mask)),
                model="m",
                run_id="r",
            )
            for name, score, mask in rows
        ]
    )
    _write_preview(out, photo, frame)
    payload = review_payload(str(out))
    first, second, third = payload["candidates"]
    assert second["suppressors"] == []  # same boxes, disjoint masks
    assert third["suppressors"] == [0]
    assert len(first["polygons"]) == 1 and len(first["polygons"][0]) > 8
    assert kept_by_page_rule(payload, {"a": 0.5}) == [0, 1]
    for threshold in (0.5, 0.75, 0.85, 0.95):
        kept = kept_by_page_rule(payload, {"a": threshold})
        page = [payload["candidates"][i] for i in kept]
        assert _as_keys(page) == _batch_keys(out, payload, {"a": threshold})


def _write_preview(out: Path, photo: Path, frame: pd.DataFrame) -> None:
    """A stored preview made of ``frame`` (as run_preview would store it)."""
    from tasks.labels import IMAGE_SCHEMA
    from tasks.preview import PreviewRecord

    layout = PreviewLayout(out)
    write_parquet_atomically(frame, layout.candidates, LABEL_SCHEMA)
    manifest = pd.DataFrame(
        [
            dict(
                image_id="img",
                source_uri=str(photo),
                relative_path=photo.name,
                width=40,
                height=40,
                orientation=1,
                skipped_reason=None,
                run_id="r",
            )
        ]
    )
    write_parquet_atomically(manifest, layout.manifest, IMAGE_SCHEMA)
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["a"]), model=ModelSpec(task="segment")
    )
    save_record(
        out,
        PreviewRecord(
            source=str(photo.parent),
            sample=[photo.name],
            seed=None,
            sample_size=1,
            floor=0.05,
            settings=settings,
            key="k",
            run_id="r",
            created_at="2026-11-26T00:00:00Z",
        ),
    )
