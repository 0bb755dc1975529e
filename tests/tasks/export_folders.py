"""Small labeled output folders (and their tables in memory) for the export tests, built
by hand so that every expected value can be worked out on paper.

A helper module, not a test module: ``write_output_folder`` is the detection folder the
image, COCO and YOLO export tests share; ``write_shard`` and ``detections_of`` are the
pieces every export test's folder is made of; ``read_yolo_tree`` reads a YOLO export
back, split by split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import supervision as sv
import yaml
from PIL import Image

from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    ImageRecord,
    OutputLayout,
    detections_to_frame,
    images_to_frame,
    write_parquet_atomically,
)


def detections_of(
    xyxy: np.ndarray,
    confidence: np.ndarray,
    class_id: np.ndarray,
    class_names: Sequence[str],
    prompts: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
) -> sv.Detections:
    """Detections with the class name and prompt (the class name unless given) of each
    row, as a backend returns them."""
    return sv.Detections(
        xyxy=xyxy,
        mask=mask,
        confidence=confidence,
        class_id=class_id,
        data={
            "class_name": np.array(class_names, dtype=str),
            "prompt": np.array(class_names if prompts is None else prompts, dtype=str),
        },
    )


def read_yolo_tree(data_yaml: Path) -> tuple[list[str], dict[str, sv.Detections]]:
    """A YOLO export read back by supervision, one split of data.yaml at a time: its
    class names (the same in every split) and each image's boxes by file name.

    Asserts that from_yolo reads every file of each split's images folder (it lists
    only the files directly inside) and that no name is in two splits.
    """
    data = yaml.safe_load(data_yaml.read_text())
    classes: list[str] | None = None
    found: dict[str, sv.Detections] = {}
    for split in ("train", "val", "test"):
        if split not in data:
            continue
        images_dir = data_yaml.parent / data[split]
        dataset = sv.DetectionDataset.from_yolo(
            images_directory_path=str(images_dir),
            annotations_directory_path=str(images_dir.parent / "labels"),
            data_yaml_path=str(data_yaml),
        )
        assert classes in (None, dataset.classes), (classes, dataset.classes)
        classes = dataset.classes
        assert len(dataset.image_paths) == len(list(images_dir.iterdir())), split
        for image_path in dataset.image_paths:
            name = Path(image_path).name
            assert name not in found, (name, split)
            found[name] = dataset.annotations[image_path]
    return classes or [], found


def write_shard(
    layout: OutputLayout,
    chunk_key: str,
    labels: pd.DataFrame,
    records: Sequence[ImageRecord],
    run_id: str,
) -> None:
    """One finished chunk: its label table and its image manifest."""
    labels_path, images_path = layout.shard_paths(chunk_key)
    write_parquet_atomically(labels, labels_path, LABEL_SCHEMA)
    write_parquet_atomically(
        images_to_frame(list(records), run_id=run_id), images_path, IMAGE_SCHEMA
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
    detections = detections_of(
        xyxy=np.array([box for _, _, box in image.boxes], dtype=np.float64).reshape(
            -1, 4
        ),
        confidence=np.array([score for _, score, _ in image.boxes]),
        class_id=np.array([class_id for class_id, _, _ in image.boxes], dtype=int),
        class_names=[CLASS_NAMES[class_id] for class_id, _, _ in image.boxes],
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
        labels = pd.concat(frames, ignore_index=True)
        write_shard(layout, chunk_key, labels, records, run_id="run-1")
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


# Classification: one row per image and class, the box the whole image.
CLASSIFICATION_NAMES = ["cat", "dog", "bird"]
SINGLE_LABEL = {"a/x.jpg": [("cat", 0.91)], "b/x.jpg": [("dog", 0.62)], "c.png": []}
MULTI_LABEL = {
    "a/x.jpg": [("cat", 0.91), ("bird", 0.55)],
    "b/x.jpg": [("dog", 0.62)],
    "c.png": [],
}


def write_classification_folder(
    root: Path, labels: dict[str, list[tuple[str, float]]]
) -> OutputLayout:
    """Source images under ``root/source`` and classification labels under ``root/out``
    (one row per image and class, the box the whole image), plus a skipped file."""
    layout = OutputLayout(root / "out")
    records, frames = [], []
    for index, (relative_path, classes) in enumerate(labels.items()):
        path = root / "source" / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16 + index, 12), (10 * index, 80, 120)).save(path)
        record = ImageRecord(
            source_uri=str(path),
            relative_path=relative_path,
            image_id=f"id-{index}",
            width=16 + index,
            height=12,
        )
        detections = detections_of(
            xyxy=np.tile([0, 0, record.width, record.height], (len(classes), 1)).astype(
                np.float32
            ),
            confidence=np.array([s for _, s in classes], dtype=np.float32),
            class_id=np.array(
                [CLASSIFICATION_NAMES.index(n) for n, _ in classes], dtype=int
            ),
            class_names=[n for n, _ in classes],
            prompts=[f"a photo of a {n}" for n, _ in classes],
        )
        records.append(record)
        frames.append(detections_to_frame(detections, record, model="clip", run_id="r"))
    records.append(
        ImageRecord(
            source_uri=str(root / "source" / "broken.jpg"),
            relative_path="broken.jpg",
            skipped_reason="not an image",
        )
    )
    write_shard(layout, "one", pd.concat(frames, ignore_index=True), records, "r")
    return layout
