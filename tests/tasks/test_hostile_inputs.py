"""One bad file or name never fails a run (issue 14).

A folder of good photos mixed with files that broke earlier versions: images too wide
and too tall for the model's resize, two images sharing a stem, a 250-byte file name,
and 3 GB files named .jpg (sparse, so they cost no disk). The `autolabel label` command
must label and charge every good image once, skip each bad one with its reason, exit 3,
and write COCO and YOLO exports that their readers open.
"""

from __future__ import annotations

import hashlib
import resource
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from cli.main import app
from model_loaders.batching import UnusableImagesError
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.credits import CreditLedger, resolve_ledger_path
from tasks.export_coco import coco_annotations_path
from tasks.export_names import MAX_EXPORT_NAME_BYTES, unique_export_names
from tasks.image_files import file_content_id, max_image_bytes
from tasks.images import DecodedImage, ImageRef, decode_image
from tasks.label import predict_usable
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.labeling import label_folder
from tests.photos import sample_image
from tests.tasks.export_folders import read_yolo_tree

runner = CliRunner()
GIB = 1024**3
# 250 bytes: 122 two-byte characters, so a cut in the middle of one would show.
LONG_NAME = "é" * 122 + "x.jpeg"
GOOD = ["astronaut.jpg", "coffee.jpg", "x.bmp", "x.jpeg", LONG_NAME]
BAD = {  # file -> words its skip reason must contain
    "wide.png": "10000x10",
    "tall.png": "10x10000",
    "huge.jpg": "not an image",
    "huge-jpeg-header.jpg": "too large",
}


def _write_good_photos(folder: Path) -> None:
    """Five small photos, all different bytes (the ledger charges by content)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = {
        "astronaut.jpg": sample_image("astronaut"),
        "coffee.jpg": sample_image("coffee"),
        "x.bmp": sample_image("chelsea"),
        "x.jpeg": sample_image("rocket"),
        LONG_NAME: sample_image("coffee").rotate(90, expand=True),
    }
    for name, image in photos.items():
        image.thumbnail((160, 160))
        image.save(folder / name, format="BMP" if name.endswith(".bmp") else "JPEG")


def _sparse_file(path: Path, head: bytes, size: int) -> None:
    with path.open("wb") as file:
        file.write(head)
        file.truncate(size)


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    _write_good_photos(folder)
    Image.new("RGB", (10000, 10), (200, 30, 30)).save(folder / "wide.png")
    Image.new("RGB", (10, 10000), (30, 200, 30)).save(folder / "tall.png")
    _sparse_file(folder / "huge.jpg", b"", 3 * GIB)
    _sparse_file(
        folder / "huge-jpeg-header.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", 3 * GIB
    )
    assert len(LONG_NAME.encode()) == 250
    assert sorted(p.name for p in folder.iterdir()) == sorted([*GOOD, *BAD])
    return folder


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@pytest.mark.usefixtures("prefect_harness")
def test_bad_files_and_names_are_skipped_or_renamed_and_the_run_finishes(
    tiny_grounding_dino, hostile_folder: Path, tmp_path: Path
):
    out = tmp_path / "out"
    args = ["label", str(hostile_folder), "--out", str(out)]
    args += ["--model", tiny_grounding_dino, "--device", "cpu", "--batch-size", "2"]
    args += ["--class", "person", "--class", "cup: a coffee cup", "--threshold", "0.3"]

    result = runner.invoke(app, args)

    # Done, some skipped: every bad file is named in report.md with its reason.
    assert result.exit_code == 3, result.output
    layout = OutputLayout(out)
    manifest = read_images(layout).set_index("relative_path")
    assert sorted(manifest.index) == sorted([*GOOD, *BAD])
    reasons = manifest["skipped_reason"].dropna().to_dict()
    assert sorted(reasons) == sorted(BAD)
    report = layout.report.read_text(encoding="utf-8")
    checked = 0
    for name, words in BAD.items():
        assert words in reasons[name], (name, reasons[name])
        lines = [line for line in report.splitlines() if f"`{name}`" in line]
        assert len(lines) == 1, (name, lines)
        assert words in lines[0].replace("\\", ""), lines[0]
        checked += 1
    assert checked == 4
    assert f"{len(GOOD) + len(BAD)} found, {len(GOOD)} labeled" in report

    # Every good image labeled once (one manifest row) and charged once.
    readable = manifest[manifest["skipped_reason"].isna()]
    assert sorted(readable.index) == sorted(GOOD)
    ledger = CreditLedger(resolve_ledger_path(out)).rows()
    assert sorted(ledger["image_id"]) == sorted(readable["image_id"])
    assert ledger["image_id"].is_unique

    # COCO opens, one image entry per labeled image, names unique and short.
    labels = read_labels(layout)
    coco_json = coco_annotations_path(layout)  # no split asked: all in train
    coco = COCO(str(coco_json))
    entries = coco.loadImgs(coco.getImgIds())
    assert len(entries) == len(GOOD)
    assert len(coco.getAnnIds()) == len(labels)
    names = [entry["file_name"] for entry in entries]
    assert len(set(names)) == len(GOOD)
    assert max(len(Path(n).name.encode()) for n in names) <= MAX_EXPORT_NAME_BYTES
    for name in names:
        assert "/" not in name and (coco_json.parent / name).is_file(), name
    x_suffix = hashlib.sha256(b"x.jpeg").hexdigest()[:8]
    assert {f"x-{x_suffix}.jpeg", "x.bmp"} <= set(names)  # one stem, two names

    # YOLO opens with supervision, one entry per labeled image, each with its boxes.
    classes, from_yolo = read_yolo_tree(layout.yolo_dir / "data.yaml")
    assert classes == ["person", "cup"]
    assert len(from_yolo) == len(GOOD)
    x_names = sorted(name for name in from_yolo if name.startswith("x"))
    suffix = hashlib.sha256(b"x.jpeg").hexdigest()[:8]
    assert x_names == [f"x-{suffix}.jpeg", "x.bmp"]  # x.bmp sorts first, keeps x
    assert sum(len(d) for d in from_yolo.values()) == len(labels)
    assert not list(out.rglob("*.tmp"))

    # The good images' labels are what a run over the good images alone gives.
    alone = tmp_path / "alone"
    _write_good_photos(alone)
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["person", "cup: a coffee cup"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu", batch_size=2),
        thresholds=Thresholds(default=0.3),
    )
    expected = read_labels(label_folder(alone, tmp_path / "alone-out", settings))
    assert len(expected) > 0
    columns = ["image_id", "class_id", "confidence", "x_min", "y_min", "x_max"]
    got = labels[columns].sort_values(columns).reset_index(drop=True)
    want = expected[columns].sort_values(columns).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-4)


def test_a_3_gb_file_is_judged_without_being_read(hostile_folder: Path):
    before = _peak_rss_bytes()
    results = {}
    for name in ("huge.jpg", "huge-jpeg-header.jpg"):
        path = hostile_folder / name
        results[name] = decode_image(ImageRef(str(path), name))
        assert file_content_id(path) is None  # over the cap: not even hashed
    grown = _peak_rss_bytes() - before
    assert grown < 200 * 1024**2, f"peak RSS grew by {grown / 1024**2:.0f} MiB"
    assert results["huge.jpg"].skipped_reason == "not an image (unrecognised format)"
    assert results["huge-jpeg-header.jpg"].skipped_reason.startswith("file too large")


@pytest.mark.parametrize(
    ("env", "expected"),
    [(None, 512 * 1024**2), ("1000", 1000), ("1_000", 1000), ("0", 512 * 1024**2),
     ("lots", 512 * 1024**2)],
)  # fmt: skip
def test_the_size_cap_comes_from_the_environment(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("AUTOLABEL_MAX_IMAGE_BYTES", raising=False)
    else:
        monkeypatch.setenv("AUTOLABEL_MAX_IMAGE_BYTES", env)
    assert max_image_bytes() == expected


def test_an_image_over_the_cap_is_skipped_before_it_is_read(monkeypatch, tmp_path):
    path = tmp_path / "photo.png"
    sample_image("coffee").save(path)
    assert isinstance(decode_image(ImageRef(str(path), "photo.png")), DecodedImage)
    monkeypatch.setenv("AUTOLABEL_MAX_IMAGE_BYTES", str(path.stat().st_size - 1))
    skipped = decode_image(ImageRef(str(path), "photo.png"))
    assert skipped.skipped_reason.startswith("file too large")
    assert "AUTOLABEL_MAX_IMAGE_BYTES" in skipped.skipped_reason
    assert file_content_id(path) is None


class _Model:
    """A backend stand-in: fails on images marked by size, records its calls."""

    def __init__(self, unusable: set[int], failing: set[int]) -> None:
        self.unusable, self.failing = unusable, failing
        self.calls: list[list[int]] = []

    def predict(self, images, ontology, *, confidence_floor):
        widths = [image.width for image in images]
        self.calls.append(widths)
        bad = {i: "too thin" for i, w in enumerate(widths) if w in self.unusable}
        if bad:
            raise UnusableImagesError(bad)
        if any(w in self.failing for w in widths):
            raise RuntimeError("boom")
        return [f"detections of {w}" for w in widths]


@pytest.mark.parametrize(
    ("widths", "unusable", "failing", "found", "reasons"),
    [
        ([1, 2, 3], set(), set(), [1, 2, 3], {}),
        ([1, 2, 3], {2}, set(), [1, None, 3], {1: "too thin"}),
        ([1, 2, 3], {1, 3}, set(), [None, 2, None], {0: "too thin", 2: "too thin"}),
        ([1, 2, 3], set(), {2}, [1, None, 3], {1: "model failed on this image"}),
        ([1, 2, 3], {1}, {3}, [None, 2, None], {0: "too thin", 2: "boom"}),
        ([1, 2], {1, 2}, set(), [None, None], {0: "too thin", 1: "too thin"}),
        ([], set(), set(), [], {}),
    ],
)
def test_predict_usable_leaves_out_only_the_images_that_fail(
    widths, unusable, failing, found, reasons
):
    model = _Model(unusable, failing)
    images = [Image.new("RGB", (w, 1)) for w in widths]
    predictions, why = predict_usable(model, images, None, confidence_floor=0.1)
    expected = [None if w is None else f"detections of {w}" for w in found]
    assert predictions == expected
    assert sorted(why) == sorted(reasons)
    for index, words in reasons.items():
        assert words in why[index], why[index]


@pytest.mark.parametrize(
    ("widths", "failing"), [([1], {1}), ([1, 2], {1, 2}), ([1, 2, 3], {1, 2, 3})]
)
def test_predict_usable_raises_when_no_image_works_alone(widths, failing):
    model = _Model(set(), failing)
    images = [Image.new("RGB", (w, 1)) for w in widths]
    with pytest.raises(RuntimeError, match="boom"):
        predict_usable(model, images, None, confidence_floor=0.1)
    assert len(model.calls) == (1 if len(widths) == 1 else 1 + len(widths))


def test_grounding_dino_names_the_images_it_cannot_resize(tiny_grounding_dino):
    from model_loaders.grounding_dino import GroundingDinoModel

    model = GroundingDinoModel.load(ModelSpec(model=tiny_grounding_dino, device="cpu"))
    ontology = Ontology.from_class_options(["person"])
    photo = sample_image("astronaut")
    photo.thumbnail((96, 96))
    images = [photo, Image.new("RGB", (10000, 10)), Image.new("RGB", (10, 10000))]
    with pytest.raises(UnusableImagesError) as raised:
        model.predict(images, ontology, confidence_floor=0.0)
    assert sorted(raised.value.reasons) == [1, 2]
    assert "10000x10 px" in raised.value.reasons[1]
    assert "aspect ratio 1000:1" in raised.value.reasons[2]

    predictions, why = predict_usable(model, images, ontology, confidence_floor=0.0)
    assert sorted(why) == [1, 2] and predictions[1:] == [None, None]
    (alone,) = model.predict([photo], ontology, confidence_floor=0.0)
    np.testing.assert_array_equal(predictions[0].xyxy, alone.xyxy)
    np.testing.assert_array_equal(predictions[0].confidence, alone.confidence)


@pytest.mark.parametrize(
    ("paths", "clash_by", "expected"),
    [
        (["a.jpg", "b.jpg"], "name", ["a.jpg", "b.jpg"]),
        (["x.bmp", "x.jpeg"], "name", ["x.bmp", "x.jpeg"]),
        (["x.bmp", "x.jpeg"], "stem", ["x.bmp", "x-{x.jpeg}.jpeg"]),
        (["d/x.bmp", "e/x.jpeg"], "stem", ["d/x.bmp", "e/x.jpeg"]),
        (["X.jpg", "x.jpg"], "name", ["X.jpg", "x-{x.jpg}.jpg"]),
        (["a" * 201 + ".jpg"], "name", ["a" * 187 + "-{" + "a" * 201 + ".jpg}.jpg"]),
        # The hashed name of the second must not take a name a third one has.
        (["x.bmp", "x.jpeg", "x-{x.jpeg}.jpeg"], "stem",
         ["x.bmp", "x-{x.jpeg:16}.jpeg", "x-{x.jpeg}.jpeg"]),
    ],
)  # fmt: skip
def test_unique_export_names(paths, clash_by, expected):
    def expand(text: str) -> str:
        while "{" in text:
            start, end = text.index("{"), text.index("}")
            source, _, length = text[start + 1 : end].partition(":")
            digest = hashlib.sha256(source.encode()).hexdigest()[: int(length or 8)]
            text = text[:start] + digest + text[end + 1 :]
        return text

    paths = [expand(p) if p.count("{") and p.startswith("x-") else p for p in paths]
    names = unique_export_names(paths, clash_by=clash_by)
    assert names == [expand(e) for e in expected]
    assert all(len(Path(n).name.encode()) <= MAX_EXPORT_NAME_BYTES for n in names)


def test_a_long_multibyte_name_is_cut_on_a_character_boundary():
    name = "a" + "é" * 120 + ".jpeg"  # 246 bytes; a cut at 186 bytes splits an "é"
    (exported,) = unique_export_names([name])
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    assert exported == "a" + "é" * 92 + f"-{digest}.jpeg"
    assert len(exported.encode()) == 199


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((400, 300), (400, 300)),  # ordinary photos are never touched
        ((10000, 10), (10000, 10)),  # resized: 64000x64, within the pixel budget
        ((20000, 1), (8192, 1)),  # resized: 1280000x64, cut to 8192:1 first
        ((3, 70001), (3, 24576)),
    ],
)
def test_clip_cuts_only_strips_whose_resize_would_be_huge(size, expected):
    from torchvision import transforms

    from model_loaders.clip import _centre_of_strip

    centre_crop = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64)])
    image = Image.new("RGB", size)
    assert _centre_of_strip(image, centre_crop).size == expected
    squash = transforms.Compose([transforms.Resize((64, 64))])
    assert _centre_of_strip(image, squash) is image
