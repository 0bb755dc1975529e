"""``--truth roboflow://WORKSPACE/PROJECT/VERSION``: the real roboflow SDK downloads the
version's COCO export from a local stub of the API; evaluated, it scores exactly as
the same truth read from a local file, and failures are one line without the key."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from tasks.evaluate import evaluate_output
from tasks.truth import TruthError, read_truth, roboflow_original_name
from tests.tasks.truth_folders import EXPECTED, coco_truth, write_out

KEY = "testkey-truth-never-shown-7"
# the truth's file names -> the names Roboflow's export gives those images
EXPORTED = {
    "copy-of-a.png": "a_png.rf.0a1b2c.png",
    "x/b.png": "b_png.rf.ff00ee.png",
    "elsewhere/c.png": "c_png.rf.00aa11.png",
    "d.png": "d_png.rf.123456.png",
}


def export_zip(tmp_path: Path) -> bytes:
    """The evaluation fixture's truth as Roboflow exports a version in COCO: flat
    renamed images in train/, a project-named supercategory, the copy of a.png
    re-encoded (so only its name can match it)."""
    path, data = coco_truth(tmp_path)
    for image in data["images"]:
        image["file_name"] = EXPORTED[image["file_name"]]
    data["categories"] = [
        {"id": 0, "name": "cans-x1", "supercategory": "none"},
        *({**c, "supercategory": "cans-x1"} for c in data["categories"]),
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train/_annotations.coco.json", json.dumps(data))
        archive.writestr("README.roboflow.txt", "exported")
        copy = (path.parent / "copy-of-a.png").read_bytes()
        archive.writestr(f"train/{EXPORTED['copy-of-a.png']}", copy + b"\0")
    return buffer.getvalue()


@pytest.fixture
def version(roboflow_api, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", KEY)
    write_out(tmp_path)
    roboflow_api.add_version(3, export_zip(tmp_path))
    return roboflow_api


def test_a_roboflow_version_scores_as_the_same_truth_read_locally(version, tmp_path):
    out = tmp_path / "out"
    truth = read_truth("roboflow://acme/cans/3")
    assert truth.source == "roboflow://acme/cans/3"
    assert truth.class_names == ["cat", "dog", "bird"]  # not the supercategory
    evaluation = evaluate_output(out, truth)
    for name, (n_truth, labels, tp) in EXPECTED.items():
        metrics = evaluation.per_class[name]
        assert (metrics.truth, metrics.labels, metrics.tp) == (n_truth, labels, tp)
    local = evaluate_output(out, read_truth(tmp_path / "truth" / "truth.json"))
    assert evaluation.overall.ap == pytest.approx(local.overall.ap)
    assert evaluation.matched_by == {"hash": 0, "path": 0, "name": 3}
    assert evaluation.unmatched_truth_images == ["train/d_png.rf.123456.png"]
    downloads = [r.path for r in version.requests if r.path.startswith("/exports")]
    assert downloads == ["/exports/3/coco"]


def test_a_failed_download_is_retried(version, tmp_path):
    version.fail_next("export", 503)
    truth = read_truth("roboflow://acme/cans/3")
    assert len(truth.images) == 4
    downloads = [r.path for r in version.requests if r.path.startswith("/exports")]
    assert len(downloads) == 2


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("roboflow://acme/cans/9", "Version number 9 is not found"),
        ("roboflow://acme/cans", "expected roboflow://WORKSPACE/PROJECT/VERSION"),
        ("roboflow://acme/cans/0", "VERSION a number from 1"),
        ("roboflow://acme/nothing/3", "cannot open roboflow://acme/nothing"),
    ],
)
def test_bad_versions_are_one_line_without_the_key(version, uri, reason, caplog):
    with pytest.raises(TruthError) as error:
        read_truth(uri)
    message = str(error.value)
    assert message.startswith(f"{uri}: ") and reason in message
    assert "\n" not in message and KEY not in message + caplog.text


def test_a_version_still_generating_is_refused_not_awaited(version):
    version.generating.add("3")
    with pytest.raises(TruthError, match="still being generated"):
        read_truth("roboflow://acme/cans/3")


@pytest.mark.parametrize(
    "name, original",
    [
        ("cat_jpg.rf.0a1b2c.jpg", "cat.jpg"),
        ("my_dog_png.rf.ffee.jpg", "my_dog.png"),
        ("cat.jpg", None),
        ("cat_jpg.rf.jpg", None),
    ],
)
def test_roboflow_export_names_map_back(name, original):
    assert roboflow_original_name(name) == original
