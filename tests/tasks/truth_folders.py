"""A small labeled output folder and human labels edited from it, for the evaluation
tests: every count below is worked out by hand in ``EXPECTED``.

A helper module, not a test module. The labels (class, score, xyxy) per image; the
truth copies them, then drops, moves and adds boxes as commented.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from model_loaders.ontology import Ontology
from tasks.approval import ApprovedSettings, now_utc, save_approved
from tasks.labels import ImageRecord, OutputLayout, detections_to_frame
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.tasks.export_folders import detections_of, write_shard

CLASSES = ["cat", "dog"]
# relative path, (width, height), colour
IMAGES = [
    ("a.png", (100, 80), (200, 30, 30)),
    ("x/b.png", (100, 80), (30, 200, 30)),
    ("c.png", (60, 60), (30, 30, 200)),
    ("e.png", (40, 40), (90, 90, 90)),  # labeled, nothing found, not in the truth
]
LABELS = {
    "a.png": [
        ("cat", 0.9, (10, 10, 50, 50)),
        ("cat", 0.6, (60, 10, 90, 40)),
        ("dog", 0.8, (5, 50, 40, 78)),
    ],
    "x/b.png": [
        ("cat", 0.7, (0, 0, 30, 30)),
        ("dog", 0.4, (50, 20, 90, 70)),
        ("dog", 0.3, (52, 22, 92, 72)),
    ],
    "c.png": [("dog", 0.5, (10, 10, 40, 40))],
    "e.png": [],
}
# Truth, by the file name the truth gives: a.png is a renamed copy next to the truth
# (matched by content), x/b.png by path, elsewhere/c.png by file name, d.png nowhere.
TRUTH = {
    "copy-of-a.png": [
        ("cat", (10, 10, 50, 50)),  # kept: the 0.9 cat finds it
        # the 0.6 cat's box dropped: a false positive
        ("dog", (60, 50, 95, 78)),  # moved away: the 0.8 dog misses it
        ("cat", (20, 60, 35, 75)),  # added: missed
        ("bird", (70, 5, 80, 15)),  # a class the labels have not
    ],
    "x/b.png": [
        ("cat", (0, 0, 30, 30)),
        ("dog", (50, 20, 90, 70)),  # the 0.4 dog finds it, the 0.3 duplicate is FP
    ],
    "elsewhere/c.png": [
        ("dog", (12, 12, 42, 42)),  # moved a little: IoU 784/1016 = 0.77
        ("cat", (50, 50, 80, 80)),  # reaches outside the 60x60 image: clipped
    ],
    "d.png": [("cat", (1, 1, 9, 9))],  # an image that was not labeled
}
TRUTH_SIZES = {
    "copy-of-a.png": (100, 80),
    "x/b.png": (100, 80),
    "elsewhere/c.png": (60, 60),
    "d.png": (20, 20),
}
# At IoU 0.5, every label kept: (truth, labels, tp).
EXPECTED = {"cat": (4, 3, 2), "dog": (3, 4, 2)}


def write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = colour
    Image.fromarray(pixels).save(path)


def content_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_out(tmp_path: Path, thresholds: Thresholds | None = None) -> Path:
    """The source images and the labeled output folder (approved.json if
    ``thresholds``); the output folder."""
    source, out = tmp_path / "source", tmp_path / "out"
    records, frames = [], []
    for relative, size, colour in IMAGES:
        write_image(source / relative, size, colour)
        record = ImageRecord(
            source_uri=str(source / relative),
            relative_path=relative,
            image_id=content_id(source / relative),
            width=size[0],
            height=size[1],
        )
        records.append(record)
        boxes = LABELS[relative]
        detections = detections_of(
            xyxy=np.array([b for _, _, b in boxes], dtype=np.float64).reshape(-1, 4),
            confidence=np.array([s for _, s, _ in boxes], dtype=np.float64),
            class_id=np.array([CLASSES.index(c) for c, _, _ in boxes], dtype=int),
            class_names=[c for c, _, _ in boxes],
        )
        frames.append(detections_to_frame(detections, record, model="m", run_id="r"))
    import pandas as pd

    write_shard(
        OutputLayout(out), "one", pd.concat(frames, ignore_index=True), records, "r"
    )
    if thresholds is not None:
        save_approved(
            out,
            ApprovedSettings(
                settings=LabelSettings(
                    ontology=Ontology.from_class_options(CLASSES),
                    thresholds=thresholds,
                ),
                approved_by="test",
                approved_at=now_utc(),
            ),
        )
    return out


def coco_truth(
    tmp_path: Path, rename: dict[str, str] | None = None
) -> tuple[Path, dict]:
    """The truth as a COCO file next to a copy of a.png; (path, its data)."""
    folder = tmp_path / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "source" / "a.png", folder / "copy-of-a.png")
    rename = rename or {}
    names = [*CLASSES, "bird"]
    data = {
        "images": [
            {"id": n, "file_name": name, "width": w, "height": h}
            for n, (name, (w, h)) in enumerate(TRUTH_SIZES.items(), start=1)
        ],
        "categories": [
            {"id": n, "name": rename.get(name, name)}
            for n, name in enumerate(names, start=1)
        ],
        "annotations": [],
    }
    for image_id, name in enumerate(TRUTH, start=1):
        for class_name, (x0, y0, x1, y1) in TRUTH[name]:
            data["annotations"].append(
                {
                    "id": len(data["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": names.index(class_name) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    path = folder / "truth.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path, data
