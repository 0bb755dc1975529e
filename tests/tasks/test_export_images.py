"""Image files in exports: upright copies, hard links, reruns, safe paths.

Also home of ``write_output_folder``, the small labeled output folder that the COCO and
YOLO export tests share (conftest.py belongs to someone else).
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import supervision as sv
from PIL import Image, ImageOps

from tasks import export_images
from tasks.export_images import image_destination, local_source, materialize_image
from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    ImageRecord,
    OutputLayout,
    detections_to_frame,
    images_to_frame,
    write_parquet_atomically,
)

CLASS_NAMES = ["cat", "dog"]
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class SourceImage:
    """One image of the shared fixture: stored size, EXIF tag and its labels."""

    relative_path: str
    stored_wh: tuple[int, int]  # pixel size in the file, before EXIF rotation
    orientation: int
    boxes: list[tuple[int, float, tuple[float, float, float, float]]]  # id, score, xyxy
    colour: tuple[int, int, int]
    chunk: str

    @property
    def upright_wh(self) -> tuple[int, int]:
        width, height = self.stored_wh
        return (height, width) if self.orientation in (5, 6, 7, 8) else (width, height)


# Boxes are listed lowest confidence first on purpose: exports sort by confidence.
SOURCE_IMAGES = [
    SourceImage(
        "a/x.jpg",
        (64, 48),
        1,
        [(1, 0.6, (10.5, 2.25, 60.0, 47.5)), (0, 0.9, (4.0, 6.0, 30.0, 40.0))],
        (200, 30, 30),
        "one",
    ),
    SourceImage(
        "b/x.jpg", (40, 30), 1, [(1, 0.8, (0, 0, 20, 15))], (30, 200, 30), "two"
    ),
    SourceImage("empty.png", (20, 20), 1, [], (30, 30, 200), "two"),
    SourceImage(
        "rotated.jpg", (40, 20), 6, [(0, 0.7, (2, 5, 18, 35))], (200, 200, 30), "two"
    ),
]
SKIPPED = "broken.jpg"  # in chunk "one", unreadable


def image_id_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def record_of(
    image: SourceImage, source_root: Path, *, image_id: str | None = None
) -> ImageRecord:
    width, height = image.upright_wh
    return ImageRecord(
        source_uri=str(source_root / image.relative_path),
        relative_path=image.relative_path,
        image_id=image_id if image_id is not None else image.relative_path,
        width=width,
        height=height,
        orientation=image.orientation,
    )


def skipped_record(source_root: Path, *, image_id: str = "") -> ImageRecord:
    return ImageRecord(
        source_uri=str(source_root / SKIPPED),
        relative_path=SKIPPED,
        image_id=image_id,
        skipped_reason="cannot identify image file",
    )


def label_frame(image: SourceImage, record: ImageRecord) -> pd.DataFrame:
    detections = sv.Detections(
        xyxy=np.array([box for _, _, box in image.boxes], dtype=np.float64).reshape(
            -1, 4
        ),
        confidence=np.array([score for _, score, _ in image.boxes]),
        class_id=np.array([class_id for class_id, _, _ in image.boxes], dtype=int),
        data={
            "class_name": np.array(
                [CLASS_NAMES[class_id] for class_id, _, _ in image.boxes], dtype=str
            ),
            "prompt": np.array(
                [CLASS_NAMES[class_id] for class_id, _, _ in image.boxes], dtype=str
            ),
        },
    )
    return detections_to_frame(detections, record, model="tiny-dino", run_id="run-1")


def small_tables(source_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixture's (manifest, labels) in memory, without any files."""
    records = [record_of(image, source_root) for image in SOURCE_IMAGES]
    images = images_to_frame([*records, skipped_record(source_root)], run_id="run-1")
    labels = pd.concat(
        [
            label_frame(image, r)
            for image, r in zip(SOURCE_IMAGES, records, strict=True)
        ],
        ignore_index=True,
    )
    return images, labels


def write_source_image(image: SourceImage, path: Path) -> None:
    """A small image with a bright top-left corner, so a rotation is visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = image.stored_wh
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = image.colour
    pixels[: height // 2, : width // 2] = 255
    picture = Image.fromarray(pixels)
    exif = Image.Exif()
    if image.orientation != 1:
        exif[EXIF_ORIENTATION] = image.orientation
    picture.save(path, exif=exif)


def write_output_folder(root: Path) -> OutputLayout:
    """Source images under ``root/source``; labels and manifest under ``root/out``.

    Two chunks, one skipped (unreadable) file, an image without labels, an
    EXIF-rotated JPEG and two ``x.jpg`` in different sub-folders.
    """
    source_root = root / "source"
    layout = OutputLayout(root / "out")
    chunks: dict[str, tuple[list[ImageRecord], list[pd.DataFrame]]] = {}
    for image in SOURCE_IMAGES:
        path = source_root / image.relative_path
        write_source_image(image, path)
        record = record_of(image, source_root, image_id=image_id_of(path))
        records, frames = chunks.setdefault(image.chunk, ([], []))
        records.append(record)
        frames.append(label_frame(image, record))
    broken = source_root / SKIPPED
    broken.write_bytes(b"not an image")
    chunks["one"][0].append(skipped_record(source_root, image_id=image_id_of(broken)))
    for chunk_key, (records, frames) in chunks.items():
        labels_path, images_path = layout.shard_paths(chunk_key)
        labels = pd.concat(frames, ignore_index=True)
        write_parquet_atomically(labels, labels_path, LABEL_SCHEMA)
        write_parquet_atomically(
            images_to_frame(records, run_id="run-1"), images_path, IMAGE_SCHEMA
        )
    return layout


def expected_boxes(relative_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(xyxy, class_id) of one fixture image, sorted for order-free comparison."""
    image = next(i for i in SOURCE_IMAGES if i.relative_path == relative_path)
    return sorted_boxes(
        np.array([box for _, _, box in image.boxes], dtype=np.float64).reshape(-1, 4),
        np.array([class_id for class_id, _, _ in image.boxes], dtype=int),
    )


def sorted_boxes(
    xyxy: np.ndarray, class_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((*xyxy.T[::-1], class_id))
    return xyxy[order], class_id[order]


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> tuple[SourceImage, Path]:
    image = SOURCE_IMAGES[3]
    path = tmp_path / "source" / image.relative_path
    write_source_image(image, path)
    return image, path


@pytest.fixture
def plain_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "plain.jpg"
    write_source_image(SOURCE_IMAGES[0], path)
    return path


def test_rotated_jpeg_gets_an_upright_copy_of_the_manifest_size(
    rotated_jpeg: tuple[SourceImage, Path], tmp_path: Path
) -> None:
    image, source = rotated_jpeg
    destination = tmp_path / "export" / "images" / "rotated.jpg"

    materialize_image(source, destination, orientation=6)

    with Image.open(source) as original, Image.open(destination) as copy:
        assert original.size == image.stored_wh == (40, 20)
        assert copy.size == image.upright_wh == (20, 40)
        assert copy.format == "JPEG"
        assert copy.getexif().get(EXIF_ORIENTATION) is None
        pixels = np.asarray(copy, dtype=float)
        expected = np.asarray(ImageOps.exif_transpose(original), dtype=float)
    # Orientation 6 shows the stored top-left corner at the top right.
    assert pixels[2:18, 12:].mean() > 240  # white (away from JPEG edge ringing)
    assert pixels[2:18, :8, 2].mean() < 80  # yellow: no blue
    assert np.abs(pixels - expected).mean() < 5  # JPEG re-encoding noise only
    assert os.stat(destination).st_ino != os.stat(source).st_ino


def test_unrotated_image_is_hard_linked(plain_jpeg: Path, tmp_path: Path) -> None:
    destination = tmp_path / "export" / "a" / "x.jpg"

    materialize_image(plain_jpeg, destination, orientation=1)

    assert os.stat(destination).st_ino == os.stat(plain_jpeg).st_ino


def test_link_falls_back_to_a_byte_copy_across_filesystems(
    plain_jpeg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device_link(source: Path, target: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(export_images.os, "link", cross_device_link)
    destination = tmp_path / "export" / "x.jpg"

    materialize_image(plain_jpeg, destination, orientation=1)

    assert destination.read_bytes() == plain_jpeg.read_bytes()
    assert os.stat(destination).st_ino != os.stat(plain_jpeg).st_ino


@pytest.mark.parametrize("orientation", [1, 6])
def test_rerun_leaves_a_finished_file_alone(
    orientation: int, rotated_jpeg: tuple[SourceImage, Path], tmp_path: Path
) -> None:
    _, source = rotated_jpeg
    destination = tmp_path / "export" / "x.jpg"
    materialize_image(source, destination, orientation=orientation)
    before = os.stat(destination)

    materialize_image(source, destination, orientation=orientation)

    after = os.stat(destination)
    # A fresh link or copy would change the inode or its ctime (link count).
    assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)
    assert [p.name for p in destination.parent.iterdir()] == ["x.jpg"]  # no temp


@pytest.mark.parametrize("orientation", [1, 6])
def test_stale_destination_of_another_size_is_replaced(
    orientation: int, rotated_jpeg: tuple[SourceImage, Path], tmp_path: Path
) -> None:
    _, source = rotated_jpeg
    destination = tmp_path / "export" / "x.jpg"
    destination.parent.mkdir(parents=True)
    Image.new("RGB", (7, 7)).save(destination)

    materialize_image(source, destination, orientation=orientation)

    with Image.open(destination) as copy:
        assert copy.size == ((40, 20) if orientation == 1 else (20, 40))


@pytest.mark.parametrize(
    ("relative_path", "expected"),
    [
        ("x.jpg", "x.jpg"),
        ("a/b/x.jpg", "a/b/x.jpg"),
        ("../x.jpg", ValueError),
        ("a/../../x.jpg", ValueError),
        ("/etc/x.jpg", ValueError),
        ("", ValueError),
    ],
)
def test_image_destination_stays_inside_the_export_folder(
    relative_path: str, expected: str | type[Exception], tmp_path: Path
) -> None:
    if isinstance(expected, str):
        assert image_destination(tmp_path, relative_path) == tmp_path / expected
    else:
        with pytest.raises(expected):
            image_destination(tmp_path, relative_path)


def test_remote_images_are_exported_from_the_labeling_cache(tmp_path: Path) -> None:
    from tasks.s3 import cache_path
    from tasks.sources import cache_dir

    assert local_source("/data/x.jpg", tmp_path) == Path("/data/x.jpg")
    cached = cache_path("s3://bucket/x.jpg", cache_dir(tmp_path))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"jpeg")
    assert local_source("s3://bucket/x.jpg", tmp_path) == cached
