"""Labels against human labels: P/R/F1 worked out by hand, AP equal to an independent
COCOeval run on the same files, and the files written."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.evaluate import evaluate_output
from tasks.evaluation_metrics import box_iou
from tasks.evaluation_report import (
    class_slug,
    curve_files,
    render_evaluation_markdown,
    write_evaluation,
)
from tasks.thresholds import Thresholds
from tasks.truth import MapError, read_truth
from tests.tasks.truth_folders import EXPECTED, LABELS, coco_truth, write_out


def _evaluate(tmp_path: Path, **kwargs):
    out = write_out(tmp_path, kwargs.pop("thresholds", None))
    truth_path, _ = coco_truth(tmp_path, kwargs.pop("rename", None))
    return out, truth_path, evaluate_output(out, read_truth(truth_path), **kwargs)


def test_precision_recall_f1_equal_the_hand_counts(tmp_path: Path):
    _, _, evaluation = _evaluate(tmp_path)
    assert list(evaluation.per_class) == ["cat", "dog"]
    for name, (truth, labels, tp) in EXPECTED.items():
        metrics = evaluation.per_class[name]
        assert (metrics.truth, metrics.labels, metrics.tp) == (truth, labels, tp)
        assert (metrics.fp, metrics.fn) == (labels - tp, truth - tp)
        assert metrics.precision == pytest.approx(tp / labels)
        assert metrics.recall == pytest.approx(tp / truth)
        assert metrics.f1 == pytest.approx(2 * tp / (truth + labels))
    # cat: P 2/3, R 1/2, F1 4/7; dog: P 1/2, R 2/3, F1 4/7; all: 4 of 7 and 7.
    assert evaluation.per_class["cat"].f1 == pytest.approx(4 / 7)
    overall = evaluation.overall
    assert (overall.truth, overall.labels, overall.tp) == (7, 7, 4)
    assert overall.precision == overall.recall == pytest.approx(4 / 7)
    assert evaluation.images == 3


def test_a_stricter_iou_loses_the_moved_box(tmp_path: Path):
    # c.png's dog overlaps its truth by 0.77: found at 0.5, missed at 0.8.
    _, _, evaluation = _evaluate(tmp_path, iou=0.8)
    dog = evaluation.per_class["dog"]
    assert (dog.tp, dog.fp, dog.fn) == (1, 3, 2)


def test_approved_thresholds_drop_labels_below_them(tmp_path: Path):
    thresholds = Thresholds(default=0.35, per_class={"dog": 0.45})
    _, _, evaluation = _evaluate(tmp_path, thresholds=thresholds)
    assert evaluation.thresholds == {"cat": 0.35, "dog": 0.45}
    # dog 0.4 (a hit) and dog 0.3 (a duplicate) go; dog 0.8 (miss), 0.5 (hit) stay.
    dog = evaluation.per_class["dog"]
    assert (dog.truth, dog.labels, dog.tp) == (3, 2, 1)
    assert evaluation.per_class["cat"].labels == 3


def test_average_precision_equals_an_independent_cocoeval(tmp_path: Path):
    _, truth_path, evaluation = _evaluate(tmp_path)
    image_ids = {"a.png": 1, "x/b.png": 2, "c.png": 3}  # ids in truth.json
    category_ids = {"cat": 1, "dog": 2}
    results = [
        {
            "image_id": image_ids[path],
            "category_id": category_ids[name],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": score,
        }
        for path, boxes in LABELS.items()
        if path in image_ids
        for name, score, (x0, y0, x1, y1) in boxes
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(truth_path))
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.params.imgIds = [1, 2, 3]  # d.png was not labeled
        evaluator.params.catIds = [1, 2]  # bird is no class of the labels
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluation.overall.ap == pytest.approx(evaluator.stats[0])
    assert evaluation.overall.ap50 == pytest.approx(evaluator.stats[1])
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    for name, k in category_ids.items():
        assert evaluation.per_class[name].ap == pytest.approx(
            precision[:, :, k - 1].mean()
        )
        assert evaluation.per_class[name].ap50 == pytest.approx(
            precision[0, :, k - 1].mean()
        )
    assert 0 < evaluation.overall.ap < evaluation.overall.ap50 < 1


def test_what_matches_nothing_is_listed(tmp_path: Path):
    _, _, evaluation = _evaluate(tmp_path)
    assert evaluation.matched_by == {"hash": 1, "path": 1, "name": 1}
    assert evaluation.unmatched_truth_images == ["d.png"]
    assert evaluation.labeled_images_without_truth == ["e.png"]
    assert evaluation.unknown_truth_classes == {"bird": 1}
    assert evaluation.classes_without_truth == []
    assert evaluation.clipped_truth_boxes == 1
    assert evaluation.outside_truth_boxes == 0
    markdown = render_evaluation_markdown(evaluation)
    for listed in ("`d.png`", "`e.png`", "bird (1)", "clipped to their image: 1"):
        assert listed in markdown


def test_map_renames_truth_classes(tmp_path: Path):
    _, _, evaluation = _evaluate(
        tmp_path, rename={"cat": "Felis"}, class_map={"Felis": "cat"}
    )
    assert evaluation.class_map == {"Felis": "cat", "dog": "dog"}
    assert evaluation.per_class["cat"].tp == EXPECTED["cat"][2]


def test_without_map_a_renamed_class_is_listed_not_scored(tmp_path: Path):
    _, _, evaluation = _evaluate(tmp_path, rename={"cat": "Felis"})
    assert list(evaluation.per_class) == ["dog"]
    assert evaluation.unknown_truth_classes == {
        "Felis": 4,
        "bird": 1,
    }  # d.png's cat: no labeled image
    assert evaluation.classes_without_truth == ["cat"]


@pytest.mark.parametrize(
    "class_map, message",
    [
        ({"wolf": "dog"}, "--map names ['wolf'], not classes of the truth"),
        ({"cat": "lion"}, "--map maps to ['lion'], not classes of the labels"),
    ],
)
def test_a_map_naming_unknown_classes_is_refused(tmp_path: Path, class_map, message):
    with pytest.raises(MapError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _evaluate(tmp_path, class_map=class_map)


def test_files_are_written(tmp_path: Path):
    out, _, evaluation = _evaluate(tmp_path)
    (out / "evaluation").mkdir()
    (out / "evaluation" / "pr-stale.png").write_bytes(b"old")
    written = write_evaluation(out, evaluation)
    names = sorted(path.name for path in written)
    assert names == ["evaluation.md", "metrics.json", "pr-cat.png", "pr-dog.png"]
    assert not (out / "evaluation" / "pr-stale.png").exists()
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["per_class"]["cat"]["tp"] == 2
    assert metrics["overall"]["truth"] == 7
    assert metrics["unmatched_truth_images"] == ["d.png"]
    for name in ("pr-cat.png", "pr-dog.png"):
        with Image.open(out / "evaluation" / name) as image:
            assert image.size == (480, 360)
    assert (
        "| cat | 4 | 3 | 2 | 1 | 2 | 0.667 | 0.500 | 0.571 |"
        in (out / "evaluation" / "evaluation.md").read_text()
    )


def test_user_text_in_the_report_is_escaped(tmp_path: Path):
    _, _, evaluation = _evaluate(tmp_path, rename={"bird": "*b*<img>|"})
    markdown = render_evaluation_markdown(evaluation)
    assert "<img>" not in markdown
    assert r"\*b\*&lt;img&gt;\| (1)" in markdown


@pytest.mark.parametrize(
    "name, slug", [("cat", "cat"), ("Aluminum Can!", "aluminum-can"), ("***", "class")]
)
def test_class_slug(name: str, slug: str):
    assert class_slug(name) == slug


def test_curve_files_are_unique():
    assert curve_files(["a b", "a-b", "A B"]) == {
        "a b": "pr-a-b.png",
        "a-b": "pr-a-b-2.png",
        "A B": "pr-a-b-3.png",
    }


def test_box_iou():
    a = np.array([[10, 10, 40, 40]], dtype=float)
    b = np.array([[12, 12, 42, 42], [100, 100, 110, 110]], dtype=float)
    assert box_iou(a, b) == pytest.approx(np.array([[784 / 1016, 0.0]]))


def test_an_output_without_labels_cannot_be_evaluated(tmp_path: Path):
    from tasks.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="no label table"):
        evaluate_output(tmp_path, read_truth(coco_truth_for_empty(tmp_path)))


def coco_truth_for_empty(tmp_path: Path) -> Path:
    path = tmp_path / "t.json"
    path.write_text('{"images": [], "annotations": [], "categories": []}')
    return path


def _segm_out(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """Masked labels on two images and truth masks edited from them (one kept, one
    moved, one dropped, one added) as a COCO file with RLE segmentations; (out, truth
    file, the labels as COCO results)."""
    from pycocotools import mask as coco_mask

    from tasks.labels import ImageRecord, OutputLayout, detections_to_frame
    from tasks.masks import mask_to_rle
    from tests.tasks.export_folders import detections_of, write_shard
    from tests.tasks.mask_shapes import boxes_mask, disk
    from tests.tasks.truth_folders import content_id, write_image

    w, h = 60, 50
    labels = {  # image -> (class, score, mask)
        "s1.png": [
            ("cat", 0.9, disk(h, w, 20, 20, 10)),
            ("dog", 0.7, boxes_mask(h, w, (35, 5, 55, 30), (52, 8, 38, 25))),
        ],
        "s2.png": [
            ("cat", 0.8, boxes_mask(h, w, (5, 5, 25, 45))),
            ("cat", 0.4, disk(h, w, 45, 35, 8)),
        ],
    }
    truth_masks = {
        "s1.png": [
            ("cat", disk(h, w, 20, 20, 10)),  # kept
            ("dog", boxes_mask(h, w, (38, 8, 58, 33))),  # moved, no hole: mask IoU 0.22
        ],
        "s2.png": [
            ("cat", boxes_mask(h, w, (5, 5, 25, 45))),  # kept; the 0.4 cat dropped
            ("dog", disk(h, w, 45, 10, 5)),  # added: missed
        ],
    }
    source, out = tmp_path / "source", tmp_path / "out"
    records, frames, results = [], [], []
    truth = {"images": [], "annotations": [], "categories": []}
    truth["categories"] = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    for n, (name, rows) in enumerate(labels.items(), start=1):
        write_image(source / name, (w, h), (40 * n, 60, 90))
        record = ImageRecord(
            str(source / name), name, content_id(source / name), width=w, height=h
        )
        records.append(record)
        frames.append(
            detections_to_frame(
                detections_of(
                    xyxy=np.array(
                        [coco_mask.toBbox(coco_mask.encode(np.asfortranarray(
                            m.astype(np.uint8)))) for _, _, m in rows]
                    ) @ np.array([[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0],
                                  [0, 0, 0, 1]], dtype=float),
                    confidence=np.array([s for _, s, _ in rows]),
                    class_id=np.array([["cat", "dog"].index(c) for c, _, _ in rows]),
                    class_names=[c for c, _, _ in rows],
                    mask=np.stack([m for _, _, m in rows]),
                ),
                record,
                model="m",
                run_id="r",
            )
        )  # fmt: skip
        truth["images"].append({"id": n, "file_name": name, "width": w, "height": h})
        for class_name, mask in truth_masks[name]:
            rle = mask_to_rle(mask)
            x, y, bw, bh = coco_mask.toBbox({**rle, "counts": rle["counts"].encode()})
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": n,
                    "category_id": 1 if class_name == "cat" else 2,
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                }
            )
        results += [
            {
                "image_id": n,
                "category_id": 1 if c == "cat" else 2,
                "segmentation": mask_to_rle(m),
                "score": s,
            }
            for c, s, m in rows
        ]
    import pandas as pd

    write_shard(OutputLayout(out), "one", pd.concat(frames), records, "r")
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(truth))
    return out, path, results


def test_mask_average_precision_equals_an_independent_segm_cocoeval(tmp_path: Path):
    out, truth_path, results = _segm_out(tmp_path)
    evaluation = evaluate_output(out, read_truth(truth_path))
    assert evaluation.segm == "evaluated"
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(truth_path))
        evaluator = COCOeval(truth, truth.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluation.overall.ap_segm == pytest.approx(evaluator.stats[0])
    assert evaluation.overall.ap50_segm == pytest.approx(evaluator.stats[1])
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    checked = 0
    for k, name in enumerate(["cat", "dog"]):
        assert evaluation.per_class[name].ap_segm == pytest.approx(
            precision[:, :, k].mean()
        )
        checked += 1
    assert checked == 2
    # the dog's box overlaps its truth by 0.6, its holed mask by 0.22: masks count
    assert evaluation.per_class["dog"].ap50 > 0
    assert evaluation.per_class["dog"].ap50_segm == 0
    assert 0 < evaluation.overall.ap_segm < 1
