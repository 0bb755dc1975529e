"""Label quality: every kind of bad row is planted and must be named by image id.

Each planted row lives on its own image, so a check that names the wrong rows (or one
that names nothing) fails here. The suite runs a handful of times only: GX validation is
cheap, its import is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from tasks import quality as quality_module
from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_COLUMNS,
    LABEL_SCHEMA,
    OutputLayout,
    write_parquet_atomically,
)
from tasks.quality import (
    QualityCheckFailed,
    QualityResult,
    QualityRules,
    check_output_quality,
    enforce_quality_policy,
    near_duplicate_flags,
    quality_check_task,
    render_quality_markdown,
    run_quality_checks,
)
from tasks.quality import task as task_module
from tasks.thresholds import Thresholds

CLASSES = ["cat", "dog"]
THRESHOLDS = Thresholds(default=0.3, per_class={"cat": 0.5})
WIDTH, HEIGHT = 100, 80


def row(
    image_id: str, xyxy=(10, 10, 50, 40), *, name="cat", score=0.9, **extra
) -> dict:
    x_min, y_min, x_max, y_max = xyxy
    values = {
        "image_id": image_id,
        "source_uri": f"/data/{image_id}.jpg",
        "width": WIDTH,
        "height": HEIGHT,
        "class_name": name,
        "class_id": CLASSES.index(name) if name in CLASSES else 7,
        "prompt": name,
        "confidence": score,
        "x_min": float(x_min),
        "y_min": float(y_min),
        "x_max": float(x_max),
        "y_max": float(y_max),
        "mask": None,
        "model": "tiny",
        "run_id": "run",
    }
    return values | extra


def table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame[
        [*LABEL_COLUMNS, *[c for c in frame.columns if c not in LABEL_COLUMNS]]
    ]


def clean_rows() -> list[dict]:
    return [
        row("good-1", (10, 10, 50, 40), name="cat", score=0.9),
        row("good-1", (60, 5, 90, 70), name="dog", score=0.31),  # above dog's 0.3 only
        row("good-2", (0, 0, WIDTH, HEIGHT), name="cat", score=0.5),  # edge to edge
        # Twins of different classes, and same-class boxes overlapping with IoU 0.8.
        row("good-3", (10, 10, 50, 40), name="cat"),
        row("good-3", (10, 10, 50, 40), name="dog"),
        row("good-4", (10, 10, 50, 50), name="cat"),
        row("good-4", (10, 10, 50, 42), name="cat", score=0.8),
        row("good-5", (10.2, 10.2, 11.2, 11.2), name="dog", score=1.0),  # 1 px box
    ]


# image id -> (bad row(s), the checks that must name it and no others)
PLANTED_BOXES: dict[str, tuple[list[dict], set[str]]] = {
    "outside-right": ([row("outside-right", (10, 10, 150, 40))], {"box_inside_image"}),
    "outside-bottom": ([row("outside-bottom", (10, 10, 50, 81))], {"box_inside_image"}),
    "outside-left": ([row("outside-left", (-3, 10, 50, 40))], {"box_inside_image"}),
    "empty-box": ([row("empty-box", (10, 10, 10.5, 40))], {"box_not_empty"}),
    "zero-box": (
        [row("zero-box", (10, 10, 10, 10))],
        {"box_ordered", "box_not_empty"},
    ),
    "inverted-x": (
        [row("inverted-x", (50, 10, 10, 40))],
        {"box_ordered", "box_not_empty"},
    ),
    "inverted-y": (
        [row("inverted-y", (10, 40, 50, 10))],
        {"box_ordered", "box_not_empty"},
    ),
    "below-threshold": (
        [row("below-threshold", name="cat", score=0.45)],  # cat's threshold is 0.5
        {"confidence_in_range"},
    ),
    "over-one": ([row("over-one", score=1.2)], {"confidence_in_range"}),
    "unknown-class": ([row("unknown-class", name="zebra")], {"class_in_ontology"}),
    "wrong-class-id": (
        [row("wrong-class-id", name="cat", class_id=1)],
        {"class_id_matches_name"},
    ),
    "near-duplicate": (
        [
            row("near-duplicate", (10, 10, 50, 40), score=0.9),
            row("near-duplicate", (10, 10, 50, 41), score=0.7),  # IoU 0.976
        ],
        {"no_near_duplicates"},
    ),
    "missing-score": ([row("missing-score", score=np.nan)], {"required_values"}),
}


@pytest.fixture(scope="module")
def planted() -> QualityResult:
    rows = clean_rows() + [r for bad, _ in PLANTED_BOXES.values() for r in bad]
    images = pd.DataFrame(
        {
            "image_id": ["good-1", "no-labels", "skipped", *PLANTED_BOXES],
            "skipped_reason": [None, None, "corrupt", *[None] * len(PLANTED_BOXES)],
            "relative_path": ["g1.jpg", "empty.jpg", "bad.jpg", *PLANTED_BOXES],
        }
    )
    return run_quality_checks(
        table(rows), images, class_names=CLASSES, thresholds=THRESHOLDS
    )


def checks_naming(result: QualityResult, image_id: str) -> set[str]:
    return {c.name for c in result.checks if image_id in c.failing_image_ids}


@pytest.mark.parametrize("image_id", list(PLANTED_BOXES))
def test_each_planted_bad_row_is_named_by_its_checks(
    planted: QualityResult, image_id: str
):
    expected = PLANTED_BOXES[image_id][1]

    assert checks_naming(planted, image_id) == expected
    assert all(not planted.check(name).success for name in expected)


def test_clean_rows_are_never_named(planted: QualityResult):
    for image_id in ("good-1", "good-2", "good-3", "good-4", "good-5"):
        assert checks_naming(planted, image_id) == set(), image_id


def test_failing_rows_are_counted_per_check(planted: QualityResult):
    assert planted.check("box_inside_image").failing_rows == 3
    assert planted.check("no_near_duplicates").failing_rows == 1  # the weaker twin
    assert not planted.success
    assert {c.name for c in planted.failed} == {
        name for _, names in PLANTED_BOXES.values() for name in names
    }


def test_images_without_labels_are_listed_but_do_not_fail_by_default(
    planted: QualityResult,
):
    check = planted.check("images_have_labels")

    assert planted.unlabeled_image_ids == ["no-labels"]  # "skipped" was never readable
    assert check.failing_image_ids == ["no-labels"]
    assert not check.blocking
    assert check not in planted.failed


def test_per_class_counts_include_empty_and_unknown_classes(planted: QualityResult):
    assert planted.per_class == {"cat": 18, "dog": 3, "zebra": 1}


def test_a_run_without_any_label_lists_its_images():
    empty = table([row("x")]).iloc[:0]
    images = pd.DataFrame({"image_id": ["a", "b"], "skipped_reason": [None, "bad"]})

    result = run_quality_checks(
        empty, images, class_names=CLASSES, thresholds=THRESHOLDS
    )

    assert result.success
    assert result.unlabeled_image_ids == ["a"]
    assert result.per_class == {"cat": 0, "dog": 0}


def test_too_many_unlabeled_images_fail_when_a_limit_is_set():
    images = pd.DataFrame(
        {"image_id": ["good-1", "a", "b"], "skipped_reason": [None, None, None]}
    )

    result = run_quality_checks(
        table([row("good-1")]),
        images,
        class_names=CLASSES,
        thresholds=THRESHOLDS,
        rules=QualityRules(max_unlabeled_fraction=0.5),
    )

    assert [c.name for c in result.failed] == ["images_have_labels"]
    assert result.unlabeled_image_ids == ["a", "b"]


# --- masks -------------------------------------------------------------------------


def rle(x0: int, y0: int, x1: int, y1: int, *, size=(HEIGHT, WIDTH)) -> str:
    """The table's mask text: COCO RLE as JSON, of the pixels [x0, x1) x [y0, y1)."""
    mask = np.zeros(size, dtype=np.uint8, order="F")
    mask[y0:y1, x0:x1] = 1
    encoded = mask_utils.encode(np.asfortranarray(mask))
    counts = encoded["counts"].decode("ascii")
    return json.dumps({"size": [int(v) for v in encoded["size"]], "counts": counts})


PLANTED_MASKS: dict[str, tuple[dict, set[str]]] = {
    "mask-empty": (row("mask-empty", mask=rle(0, 0, 0, 0)), {"mask_not_empty"}),
    "mask-garbage": (row("mask-garbage", mask="{not json"), {"mask_not_empty"}),
    "mask-bad-counts": (
        row("mask-bad-counts", mask=json.dumps({"size": [80, 100], "counts": 5})),
        {"mask_not_empty"},
    ),
    "mask-outside": (
        row("mask-outside", (10, 10, 50, 40), mask=rle(60, 10, 90, 40)),
        {"mask_inside_box"},
    ),
    "mask-spills": (
        row("mask-spills", (10, 10, 50, 40), mask=rle(10, 10, 55, 40)),
        {"mask_inside_box"},
    ),
    "mask-wrong-size": (
        row("mask-wrong-size", mask=rle(10, 10, 50, 40, size=(40, 50))),
        {"mask_inside_box"},
    ),
}


@pytest.mark.parametrize("require_masks", [False, True])
def test_mask_checks_name_each_planted_mask(require_masks: bool):
    clean = [
        row("good-mask", (10.4, 10.6, 49.5, 39.2), mask=rle(10, 10, 50, 40)),
        row("good-dict", (10, 10, 50, 40), mask=json.loads(rle(12, 12, 48, 38))),
    ]
    bad = [r for r, _ in PLANTED_MASKS.values()]
    no_mask = row("no-mask", mask=None)  # a detection row: a finding only if required

    result = run_quality_checks(
        table([*clean, *bad, no_mask]),
        class_names=CLASSES,
        thresholds=THRESHOLDS,
        rules=QualityRules(require_masks=require_masks),
    )

    for image_id, (_, expected) in PLANTED_MASKS.items():
        assert checks_naming(result, image_id) == expected, image_id
    assert checks_naming(result, "good-mask") == set()
    assert checks_naming(result, "good-dict") == set()
    assert checks_naming(result, "no-mask") == (
        {"mask_not_empty"} if require_masks else set()
    )


def test_mask_checks_run_only_when_there_is_a_mask_column(planted: QualityResult):
    names = {c.name for c in planted.checks}

    assert "mask_not_empty" not in names and "mask_inside_box" not in names


# --- near duplicates ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "scores", "names", "expected"),
    [
        ([(0, 0, 10, 10), (0, 0, 10, 10)], [0.5, 0.9], ["a", "a"], [True, False]),
        ([(0, 0, 10, 10), (0, 0, 10, 10)], [0.9, 0.9], ["a", "a"], [False, True]),
        ([(0, 0, 10, 10), (0, 0, 10, 10)], [0.5, 0.9], ["a", "b"], [False, False]),
        ([(0, 0, 10, 10), (0, 0, 10, 9)], [0.5, 0.9], ["a", "a"], [False, False]),
        ([(0, 0, 10, 10), (0, 0, 10, 9.5)], [0.9, 0.5], ["a", "a"], [False, True]),
        ([(0, 0, 0, 0), (0, 0, 0, 0)], [0.5, 0.9], ["a", "a"], [False, False]),
    ],
)
def test_near_duplicate_flags_the_weaker_twin(boxes, scores, names, expected):
    frame = pd.DataFrame(boxes, columns=["x_min", "y_min", "x_max", "y_max"])
    frame["confidence"] = scores
    frame["class_name"] = names
    frame["image_id"] = "img"

    assert near_duplicate_flags(frame, 0.9).tolist() == expected


# --- report, policy, task ----------------------------------------------------------


def write_output(out: Path, rows: list[dict]) -> None:
    layout = OutputLayout(out)
    labels_path, images_path = layout.shard_paths("one")
    write_parquet_atomically(table(rows)[LABEL_COLUMNS], labels_path, LABEL_SCHEMA)
    ids = sorted({r["image_id"] for r in rows})
    images = pd.DataFrame(
        {
            "image_id": ids,
            "source_uri": [f"/data/{i}.jpg" for i in ids],
            "relative_path": [f"{i}.jpg" for i in ids],
            "width": WIDTH,
            "height": HEIGHT,
            "orientation": 1,
            "skipped_reason": None,
            "run_id": "run",
        }
    )
    write_parquet_atomically(images, images_path, IMAGE_SCHEMA)


def test_warn_policy_writes_the_report_and_returns(tmp_path: Path):
    write_output(tmp_path, [*clean_rows(), row("over-one", score=1.2)])

    result = check_output_quality(
        tmp_path, class_names=CLASSES, thresholds=THRESHOLDS, policy="warn"
    )

    assert result.check("confidence_in_range").failing_image_ids == ["over-one"]
    report = (tmp_path / "quality.md").read_text()
    assert "`confidence_in_range`" in report and "`over-one` (over-one.jpg)" in report
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["success"] is False
    assert saved["per_class"] == {"cat": 6, "dog": 3}


def test_fail_policy_raises_after_the_report_and_artifact_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from tasks.settings import LabelSettings

    artifacts: list[dict] = []
    monkeypatch.setattr(
        task_module,
        "create_markdown_artifact",
        lambda **kw: artifacts.append(kw),
    )
    write_output(tmp_path, [*clean_rows(), row("unknown-class", name="zebra")])
    settings = LabelSettings.model_validate(
        {
            "ontology": {"classes": [{"name": n} for n in CLASSES]},
            "thresholds": THRESHOLDS,
            # A segmentation run: every label must then carry a mask, and none does.
            "model": {"task": "segment"},
        }
    )

    result = quality_check_task.fn(str(tmp_path), settings, policy="fail")
    assert "unknown-class" in (tmp_path / "quality.md").read_text()
    with pytest.raises(QualityCheckFailed) as raised:
        enforce_quality_policy(result, "fail", tmp_path / "quality.md")

    message = str(raised.value)
    assert message.startswith("label quality checks failed: ")
    assert "class_in_ontology (1 image(s))" in message
    assert "mask_not_empty (6 image(s))" in message
    assert message.endswith(f"see {tmp_path / 'quality.md'}")
    assert "unknown-class" in (tmp_path / "quality.md").read_text()
    (artifact,) = artifacts
    assert artifact["key"] == "autolabel-quality"
    assert "unknown-class" in artifact["markdown"]


def test_a_clean_output_passes_every_check_even_under_the_fail_policy(
    tmp_path: Path,
):
    write_output(tmp_path, clean_rows())

    result = check_output_quality(
        tmp_path,
        class_names=CLASSES,
        thresholds=THRESHOLDS,
        rules=QualityRules(max_unlabeled_fraction=0.0),
        policy="fail",
    )

    assert result.success, [c for c in result.checks if not c.success]
    assert all(c.success and not c.failing_image_ids for c in result.checks)
    assert result.check("images_have_labels").blocking
    assert (result.labels, result.images, result.unlabeled_image_ids) == (8, 5, [])
    assert "All blocking checks passed." in (tmp_path / "quality.md").read_text()


def test_an_unknown_policy_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="choose warn or fail"):
        check_output_quality(
            tmp_path, class_names=CLASSES, thresholds=THRESHOLDS, policy="strict"
        )


def test_markdown_lists_failures_and_cuts_long_lists(planted: QualityResult):
    markdown = render_quality_markdown(planted, "fail")

    assert "check(s) failed** (policy: fail: the run fails)" in markdown
    assert "`no-labels` (empty.jpg)" in markdown  # the manifest's path, if known
    assert "`wrong-class-id` (/data/wrong-class-id.jpg)" not in markdown
    assert "`outside-right` (outside-right)" in markdown
    assert "| cat | 18 |" in markdown
    many = QualityResult(
        checks=[
            quality_module.CheckResult(
                "box_ordered", "x", False, 60, [f"id-{n:02d}" for n in range(60)]
            )
        ],
        labels=60,
        images=60,
        per_class={},
        unlabeled_image_ids=[],
    )
    assert "... and 10 more (see quality.json)" in render_quality_markdown(many)
