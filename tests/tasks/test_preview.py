"""The preview: sample selection, candidates at a floor, re-filtering with no model."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_loaders.ontology import Ontology
from tasks.images import ImageRef, SourceError, discover_images
from tasks.labels import LABEL_COLUMNS, frame_to_detections
from tasks.preview import (
    PreviewError,
    PreviewLayout,
    class_counts,
    filter_candidates,
    load_record,
    read_candidates,
    run_preview,
    select_sample,
)
from tasks.preview_report import show_preview
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds, apply_nms, apply_thresholds
from tests.counting_backend import CountingModel, counting_spec
from tests.photos import write_sample_photos

CLASSES = ["can", "person"]


def _refs(n: int) -> list[ImageRef]:
    return [ImageRef(f"/data/img{i:02d}.jpg", f"img{i:02d}.jpg") for i in range(n)]


def _rows(*boxes: tuple[str, str, float, tuple[float, float, float, float]]):
    """Candidate rows: (image, class, score, xyxy)."""
    return pd.DataFrame(
        [
            {
                "image_id": image,
                "source_uri": f"/data/{image}.jpg",
                "width": 100,
                "height": 100,
                "class_name": name,
                "class_id": CLASSES.index(name),
                "prompt": name,
                "confidence": score,
                "x_min": xyxy[0],
                "y_min": xyxy[1],
                "x_max": xyxy[2],
                "y_max": xyxy[3],
                "model": "m",
                "run_id": "r",
            }
            for image, name, score, xyxy in boxes
        ],
        columns=LABEL_COLUMNS,
    )


# Scores exactly representable in float32, so "score == threshold" is a real tie.
CANDIDATES = _rows(
    ("a", "can", 0.25, (0, 0, 10, 10)),
    ("a", "can", 0.5, (20, 20, 30, 30)),
    ("a", "person", 0.75, (40, 40, 60, 60)),
    ("b", "can", 0.125, (0, 0, 10, 10)),
    ("b", "person", 0.5, (0, 0, 50, 50)),
    ("b", "person", 0.875, (60, 60, 90, 90)),
)


def test_sample_is_reproducible_for_a_seed_and_differs_across_seeds():
    refs = _refs(30)
    first = select_sample(refs, size=4, seed=7)
    assert select_sample(list(reversed(refs)), size=4, seed=7) == first
    others = {
        tuple(r.relative_path for r in select_sample(refs, size=4, seed=s))
        for s in range(5)
    }
    assert len(others) > 1
    assert len(first) == 4 and len(set(first)) == 4


@pytest.mark.parametrize(
    ("size", "images", "expected"),
    [
        (10, None, ["img00.jpg", "img01.jpg", "img02.jpg"]),  # fewer than asked: all
        (2, ["img02.jpg", "img00.jpg"], ["img02.jpg", "img00.jpg"]),  # picked, in order
    ],
)
def test_sample_size_and_picked_images(size, images, expected):
    chosen = select_sample(_refs(3), size=size, seed=0, images=images)
    assert [ref.relative_path for ref in chosen] == expected


def test_picked_images_by_bare_name_and_refusals():
    refs = [ImageRef("/d/a/x.jpg", "a/x.jpg"), ImageRef("/d/b/x.jpg", "b/x.jpg"),
            ImageRef("/d/b/y.jpg", "b/y.jpg")]  # fmt: skip
    assert select_sample(refs, images=["y.jpg"])[0].relative_path == "b/y.jpg"
    with pytest.raises(PreviewError, match="names 2 files"):
        select_sample(refs, images=["x.jpg"])
    with pytest.raises(PreviewError, match="no such image"):
        select_sample(refs, images=["z.jpg"])
    with pytest.raises(SourceError, match="no images"):
        select_sample([], size=4)


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        (Thresholds(default=0.0), {"can": (3, 3), "person": (3, 3)}),
        (Thresholds(default=0.5), {"can": (1, 3), "person": (3, 3)}),  # 0.5 == 0.5 kept
        (Thresholds(default=0.5000001), {"can": (0, 3), "person": (2, 3)}),
        (
            Thresholds(default=0.9, per_class={"can": 0.125}),
            {"can": (3, 3), "person": (0, 3)},
        ),
        (Thresholds(default=0.875), {"can": (0, 3), "person": (1, 3)}),  # edge again
        (Thresholds(default=1.0), {"can": (0, 3), "person": (0, 3)}),
    ],
)
def test_counts_at_thresholds_including_the_edges(thresholds, expected):
    shown = filter_candidates(
        CANDIDATES, thresholds, nms="none", nms_iou=0.5, class_names=CLASSES
    )
    assert class_counts(CANDIDATES, shown, CLASSES) == expected
    # Rows come back unchanged (not re-built from float32 Detections).
    pd.testing.assert_frame_equal(shown, CANDIDATES.loc[shown.index])


@pytest.mark.parametrize(
    ("nms", "expected_scores"),
    [
        ("none", [0.9, 0.8, 0.7]),
        ("class", [0.9, 0.7]),  # the two overlapping cans merge; the person stays
        ("agnostic", [0.9]),  # all three overlap
    ],
)
def test_nms_is_applied_per_image_like_the_batch(nms, expected_scores):
    candidates = _rows(
        ("a", "can", 0.9, (0, 0, 10, 10)),
        ("a", "can", 0.8, (1, 1, 10, 10)),
        ("a", "person", 0.7, (0, 0, 10, 9)),
        ("b", "can", 0.6, (0, 0, 10, 10)),  # another image: never suppressed by "a"
    )
    shown = filter_candidates(
        candidates, Thresholds(default=0.5), nms=nms, nms_iou=0.5, class_names=CLASSES
    )
    assert shown[shown["image_id"] == "a"]["confidence"].tolist() == pytest.approx(
        expected_scores
    )
    assert shown[shown["image_id"] == "b"]["confidence"].tolist() == pytest.approx(
        [0.6]
    )


@dataclass
class Stored:
    out: str
    source: str
    settings: LabelSettings
    refs: list[ImageRef]
    calls: int  # CountingModel.calls right after the preview ran


@pytest.fixture(scope="module")
def stored(
    tmp_path_factory: pytest.TempPathFactory, tiny_grounding_dino: str
) -> Stored:
    """One preview of 2 of the 4 photos for the module, by the counting backend."""
    root = tmp_path_factory.mktemp("preview")
    write_sample_photos(root / "photos")
    settings = LabelSettings(
        ontology=Ontology.from_class_options(CLASSES),
        model=counting_spec(tiny_grounding_dino),
        nms="none",
    )
    refs = select_sample(discover_images(root / "photos"), size=2, seed=1)
    out = str(root / "out")
    before = CountingModel.calls, CountingModel.images
    run_preview(
        str(root / "photos"), refs, settings, out, run_id="t", seed=1, sample_size=2
    )
    assert (CountingModel.calls, CountingModel.images) == (before[0] + 1, before[1] + 2)
    return Stored(out, str(root / "photos"), settings, refs, CountingModel.calls)


def test_refiltering_never_calls_the_model_and_counts_are_right(stored: Stored):
    candidates = read_candidates(stored.out)
    assert len(candidates) > 0
    assert set(candidates["source_uri"]) == {ref.uri for ref in stored.refs}
    scores = candidates["confidence"].to_numpy()
    below_one = np.sort(scores[scores < 1.0])
    tie = float(below_one[len(below_one) // 2])  # some candidate's exact score
    above_tie = float(np.nextafter(np.float32(tie), np.float32(2)))
    shown_at = {}
    for threshold in [0.05, 0.5, tie, above_tie, 1.0]:
        start = time.perf_counter()
        summary = show_preview(stored.out, Thresholds(default=threshold))
        assert time.perf_counter() - start < 5  # decode + draw 2 photos, no model
        for name in CLASSES:
            of_class = scores[candidates["class_name"].to_numpy() == name]
            expected = (int((of_class >= threshold).sum()), len(of_class))
            assert summary.counts[name] == expected, (threshold, name)
        shown_at[threshold] = sum(shown for shown, _ in summary.counts.values())
    assert CountingModel.calls == stored.calls  # not one model call
    assert shown_at[tie] > shown_at[above_tie]  # score == threshold is shown
    # sample.json records what was shown last.
    assert load_record(stored.out).settings.thresholds == Thresholds(default=1.0)


def test_preview_writes_images_summary_and_record(stored: Stored):
    layout = PreviewLayout(stored.out)
    summary = show_preview(stored.out, Thresholds(default=0.5))
    names = sorted(r.relative_path for r in stored.refs)
    assert sorted(Path(p).name for p in summary.images) == names
    assert sorted(p.name for p in layout.images_dir.iterdir()) == names
    record = json.loads(layout.record.read_text())
    assert record["sample"] == [r.relative_path for r in stored.refs]
    assert record["seed"] == 1 and record["credits"] == 0 and summary.credits == 0
    ontology = stored.settings.ontology.model_dump(mode="json")
    assert record["settings"]["ontology"] == ontology
    assert record["settings"]["model"]["model"] == stored.settings.model.model
    text = layout.summary.read_text()
    shown, total = summary.counts["can"]
    assert f"| can | 0.5 | {shown}/{total} |" in text
    assert "0 credits" in text and "](images/" in text


def test_same_sample_reuses_candidates_and_new_descriptions_rerun_it(
    stored: Stored, tmp_path: Path
):
    out = str(tmp_path / "out")
    shutil.copytree(stored.out, out)
    before = read_candidates(out)
    calls = CountingModel.calls
    run = dict(run_id="u", seed=1, sample_size=2)
    run_preview(stored.source, stored.refs, stored.settings, out, **run)
    assert CountingModel.calls == calls  # cached: no model call
    pd.testing.assert_frame_equal(read_candidates(out), before)

    revised = stored.settings.model_copy(
        update={"ontology": Ontology.from_class_options(["can: soda can", "person"])}
    )
    run_preview(stored.source, stored.refs, revised, out, **run)
    assert CountingModel.calls == calls + 1  # new descriptions: the model runs again
    assert set(read_candidates(out)["prompt"]) <= {"soda can", "person"}
    assert set(read_candidates(out)["source_uri"]) == set(before["source_uri"])
    assert load_record(out).sample == [r.relative_path for r in stored.refs]


def test_no_preview_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PreviewError, match="autolabel preview SOURCE"):
        show_preview(str(tmp_path))


def test_filter_is_the_batch_filter_on_model_output(stored: Stored):
    """Per image, the preview keeps exactly what apply_thresholds + apply_nms keep."""
    candidates = read_candidates(stored.out)
    thresholds = Thresholds(default=float(candidates["confidence"].median()))
    shown = filter_candidates(
        candidates, thresholds, nms="class", nms_iou=0.3, class_names=CLASSES
    )
    assert len(shown) > 0  # at the median score, something is kept
    compared = 0
    for uri, group in candidates.groupby("source_uri"):
        kept = apply_thresholds(frame_to_detections(group), thresholds, CLASSES)
        expected = apply_nms(kept, "class", 0.3)
        got = shown[shown["source_uri"] == uri]
        assert len(got) == len(expected)
        np.testing.assert_array_equal(
            np.sort(got["confidence"].to_numpy(np.float32)),
            np.sort(expected.confidence),
        )
        compared += 1
    assert compared == len(stored.refs)  # each image of the sample
