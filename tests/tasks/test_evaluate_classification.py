"""Classification labels against classification truth (class folders, Roboflow's
_classes.csv, plain CSV): counts by hand, and every score equal to scikit-learn's on
the same answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_fscore_support,
)

from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.approval import ApprovedSettings, now_utc, save_approved
from tasks.evaluate import EvaluationError, evaluate_output
from tasks.evaluation_report import render_evaluation_markdown, write_evaluation
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tasks.truth import TruthError, read_truth
from tests.tasks.export_folders import CLASSIFICATION_NAMES, write_classification_folder
from tests.tasks.truth_folders import coco_truth, write_out

CLASSES = CLASSIFICATION_NAMES  # cat, dog, bird
SINGLE = {  # labels: one row per image at most
    "p0.jpg": [("cat", 0.9)],
    "p1.jpg": [("cat", 0.6)],
    "p2.jpg": [("dog", 0.8)],
    "p3.jpg": [("bird", 0.4)],
    "p4.jpg": [],
    "p5.jpg": [("dog", 0.7)],
    "p6.jpg": [("cat", 0.95)],  # not in the truth
}
# truth: split/class/file; fish is no class of the labels; q.jpg was not labeled
SINGLE_TRUTH = {
    "train/cat/p0.jpg": "p0.jpg",
    "train/dog/p1.jpg": "p1.jpg",
    "valid/dog/p2.jpg": "p2.jpg",
    "valid/bird/p3.jpg": "p3.jpg",
    "train/cat/p4.jpg": "p4.jpg",
    "train/fish/p5.jpg": "p5.jpg",
    "train/cat/q.jpg": "p0.jpg",
}
MULTI = {
    "m0.jpg": [("cat", 0.9), ("dog", 0.3)],
    "m1.jpg": [("dog", 0.8), ("bird", 0.6)],
    "m2.jpg": [("cat", 0.55)],
    "m3.jpg": [("bird", 0.2)],
    "m4.jpg": [("cat", 0.7), ("dog", 0.65), ("bird", 0.9)],
}
MULTI_TRUTH = {
    "m0.jpg": ["cat"],
    "m1.jpg": ["dog", "bird"],
    "m2.jpg": ["cat", "dog"],
    "m3.jpg": [],
    "m4.jpg": ["cat", "bird"],
}


def _approve(out: Path, task: str, thresholds: Thresholds) -> None:
    save_approved(
        out,
        ApprovedSettings(
            settings=LabelSettings(
                ontology=Ontology.from_class_options(CLASSES),
                model=ModelSpec(task=task),
                thresholds=thresholds,
            ),
            approved_by="test",
            approved_at=now_utc(),
        ),
    )


def _single(tmp_path: Path, thresholds: Thresholds | None = None):
    layout = write_classification_folder(tmp_path, SINGLE)
    if thresholds is not None:
        _approve(layout.root, "classify", thresholds)
    truth = tmp_path / "truth"
    for path, source in SINGLE_TRUTH.items():
        (truth / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "source" / source, truth / path)
    return layout.root, truth


def _sklearn_single(predicted: dict[str, str | None], truth: dict[str, str]):
    names = sorted(truth)
    y_true = [truth[n] for n in names]
    y_pred = [predicted[n] or "none" for n in names]
    return y_true, y_pred


def test_single_label_counts_accuracy_and_sklearn_agree(tmp_path: Path):
    out, truth_dir = _single(tmp_path)
    evaluation = evaluate_output(out, read_truth(truth_dir))
    assert evaluation.task == "classify"
    assert evaluation.images == 6
    # p5's truth (fish) is unknown: out of the accuracy. p0, p2, p3 right of 5.
    assert (evaluation.accuracy, evaluation.accuracy_images) == (pytest.approx(0.6), 5)
    counts = {n: (m.truth, m.labels, m.tp) for n, m in evaluation.per_class.items()}
    assert counts == {"cat": (2, 2, 1), "dog": (2, 2, 1), "bird": (1, 1, 1)}
    assert evaluation.unknown_truth_classes == {"fish": 1}
    assert evaluation.unmatched_truth_images == ["train/cat/q.jpg"]
    assert evaluation.labeled_images_without_truth == ["p6.jpg"]

    truth = {f: p.split("/")[1] for p, f in SINGLE_TRUTH.items() if f != "p0.jpg"}
    truth["p0.jpg"] = "cat"
    predicted = {f: (labels[0][0] if labels else None) for f, labels in SINGLE.items()}
    y_true, y_pred = _sklearn_single(predicted, truth)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=CLASSES, zero_division=0
    )
    for k, name in enumerate(CLASSES):
        metrics = evaluation.per_class[name]
        assert metrics.precision == pytest.approx(precision[k])
        assert metrics.recall == pytest.approx(recall[k])
        assert metrics.f1 == pytest.approx(f1[k])
        assert metrics.truth == support[k]
    known = [k for k, name in enumerate(sorted(truth)) if truth[name] != "fish"]
    assert evaluation.accuracy == pytest.approx(
        accuracy_score([y_true[k] for k in known], [y_pred[k] for k in known])
    )
    micro = precision_recall_fscore_support(
        y_true, y_pred, labels=CLASSES, average="micro"
    )
    assert evaluation.overall.precision == pytest.approx(micro[0])
    assert evaluation.overall.recall == pytest.approx(micro[1])


def test_single_label_approved_thresholds_drop_answers(tmp_path: Path):
    out, truth_dir = _single(
        tmp_path, Thresholds(default=0.35, per_class={"bird": 0.5})
    )
    evaluation = evaluate_output(out, read_truth(truth_dir))
    assert evaluation.accuracy == pytest.approx(2 / 5)  # p3's bird 0.4 is dropped
    bird = evaluation.per_class["bird"]
    assert (bird.truth, bird.labels, bird.tp) == (1, 0, 0)
    assert bird.precision is None and bird.recall == 0


def _multi_truth(tmp_path: Path, kind: str) -> Path:
    """MULTI_TRUTH written as ``kind``; the path to pass as --truth."""
    root = tmp_path / "truth"
    folder = root / "train" if kind == "roboflow" else root
    folder.mkdir(parents=True)
    for name in MULTI_TRUTH:
        shutil.copy(tmp_path / "source" / name, folder / name)
    if kind == "roboflow":  # with Roboflow's space after each comma
        lines = ["filename, " + ", ".join(CLASSES)]
        lines += [
            ", ".join([n, *("1" if c in cs else "0" for c in CLASSES)])
            for n, cs in MULTI_TRUTH.items()
        ]
        (folder / "_classes.csv").write_text("\n".join(lines) + "\n")
        return root
    if kind == "labels.csv":  # autolabel's own class table
        lines = ["image,classes," + ",".join(CLASSES)]
        lines += [f"{n},{';'.join(cs)},,," for n, cs in MULTI_TRUTH.items()]
    else:
        lines = ["image,class"] + [",".join([n, *cs]) for n, cs in MULTI_TRUTH.items()]
    (root / "truth.csv").write_text("\n".join(lines) + "\n")
    return root / "truth.csv"


@pytest.mark.parametrize("kind", ["roboflow", "labels.csv", "rows"])
def test_multi_label_scores_equal_sklearn(tmp_path: Path, kind: str):
    layout = write_classification_folder(tmp_path, MULTI)
    _approve(layout.root, "classify-multi", Thresholds(default=0.5))
    truth = read_truth(_multi_truth(tmp_path, kind))
    assert truth.kind == "classes"
    evaluation = evaluate_output(layout.root, truth)
    assert evaluation.task == "classify-multi"
    assert evaluation.images == 5

    names = list(MULTI)
    y_true = np.array([[c in MULTI_TRUTH[n] for c in CLASSES] for n in names])
    scores = [dict(MULTI[n]) for n in names]
    y_score = np.array([[s.get(c, 0.0) for c in CLASSES] for s in scores])
    y_pred = y_score >= 0.5
    # m0, m1, m3 right: 3 of 5
    assert evaluation.accuracy == pytest.approx(accuracy_score(y_true, y_pred)) == 0.6
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0
    )
    checked = 0
    for k, name in enumerate(CLASSES):
        metrics = evaluation.per_class[name]
        assert metrics.precision == pytest.approx(precision[k])
        assert metrics.recall == pytest.approx(recall[k])
        assert metrics.f1 == pytest.approx(f1[k])
        assert metrics.ap == pytest.approx(
            average_precision_score(y_true[:, k], y_score[:, k])
        )
        checked += 1
    assert checked == 3
    assert evaluation.overall.ap == pytest.approx(
        average_precision_score(y_true, y_score, average="macro")
    )
    assert 0 < evaluation.overall.ap < 1


def test_multi_label_report_files(tmp_path: Path):
    layout = write_classification_folder(tmp_path, MULTI)
    _approve(layout.root, "classify-multi", Thresholds(default=0.5))
    evaluation = evaluate_output(
        layout.root, read_truth(_multi_truth(tmp_path, "roboflow"))
    )
    written = sorted(p.name for p in write_evaluation(layout.root, evaluation))
    assert written == [
        "evaluation.md",
        "metrics.json",
        "pr-bird.png",
        "pr-cat.png",
        "pr-dog.png",
    ]
    markdown = render_evaluation_markdown(evaluation)
    assert "- Accuracy (every class right): 0.600 over 5 image(s)" in markdown
    assert (
        "| Class | Truth | Labels | TP | FP | FN | Precision | Recall | F1 | AP |"
        in (markdown)
    )


def test_box_truth_for_classification_labels_is_one_line(tmp_path: Path):
    layout = write_classification_folder(tmp_path / "c", MULTI)
    _approve(layout.root, "classify-multi", Thresholds(default=0.5))
    write_out(tmp_path)
    path, _ = coco_truth(tmp_path)
    with pytest.raises(EvaluationError, match="against classification truth"):
        evaluate_output(layout.root, read_truth(path))


def test_class_truth_for_box_labels_is_one_line(tmp_path: Path):
    out = write_out(tmp_path, Thresholds())
    _, truth_dir = _single(tmp_path / "c")
    with pytest.raises(EvaluationError, match="against COCO or YOLO truth"):
        evaluate_output(out, read_truth(truth_dir))


@pytest.mark.parametrize(
    "text, reason",
    [
        ("filename,cat\na.jpg,2\n", ":2: expected a file name and 1 values 0 or 1"),
        ("", "an empty CSV file"),
        ("/etc/passwd,cat\n", "is not a relative image path"),
    ],
)
def test_bad_class_csv_is_one_line(tmp_path: Path, text: str, reason: str):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TruthError) as error:
        read_truth(path)
    assert str(error.value).startswith(f"{path}") and reason in str(error.value)
    assert "\n" not in str(error.value)
