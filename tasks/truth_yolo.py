"""Ground truth from a YOLO folder: ``data.yaml`` for the class names, one ``.txt`` per
image with normalized boxes or polygons.

Kept apart from the COCO reader: YOLO has no image sizes in its labels (each image is
opened, honouring EXIF orientation as the label table does) and its errors are about
lines of label files.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from PIL import Image

from tasks.truth_coco import segmentation_rle
from tasks.truth_model import (
    BoxFixes,
    GroundTruth,
    TruthError,
    TruthImage,
    error_reason,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
_EXIF_ORIENTATION = 0x0112


def read_yolo_truth(data_yaml: Path) -> GroundTruth:
    """Boxes (and polygons, as masks) of a YOLO folder: ``data.yaml`` names the classes;
    every image under a folder named ``images`` (flat, ``<split>/images`` or
    ``images/<split>``) has its labels at the same place under ``labels`` (.txt)."""
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise TruthError(f"{data_yaml}: malformed YAML: {reason}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TruthError(
            f"{data_yaml}: cannot be read: {error_reason(error)}"
        ) from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            names = [str(names[key]) for key in sorted(names, key=int)]
        except (TypeError, ValueError):
            names = None
    if not isinstance(names, list) or not names:
        raise TruthError(f"{data_yaml}: no class 'names' list")
    class_names = [str(name) for name in names]
    root = data_yaml.parent
    images: list[TruthImage] = []
    rows: list[dict] = []
    fixes = BoxFixes()
    for image_path in _yolo_images(root):
        images_dir = _images_folder(image_path)
        relative = image_path.relative_to(images_dir)
        label_path = (images_dir.parent / "labels" / relative).with_suffix(".txt")
        width, height = _image_size(image_path)
        image = TruthImage.at(relative.as_posix(), width, height, file=image_path)
        index = len(images)
        images.append(image)
        for row in _yolo_rows(label_path, class_names, image, fixes):
            row["truth_image"] = index
            rows.append(row)
    if not images:
        raise TruthError(
            f"{root}: no images under an 'images' folder next to {data_yaml.name}"
        )
    return GroundTruth.from_rows(data_yaml, images, rows, class_names, fixes)


def _yolo_images(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and "images" in path.relative_to(root).parts[:-1]
    )


def _images_folder(image_path: Path) -> Path:
    """The nearest folder named ``images`` above an image."""
    for parent in image_path.parents:
        if parent.name == "images":
            return parent
    raise AssertionError(image_path)  # _yolo_images lists only such images


def _yolo_rows(
    label_path: Path, class_names: list[str], image: TruthImage, fixes: BoxFixes
) -> list[dict]:
    if not label_path.is_file():
        return []  # an image without a label file has no objects
    rows = []
    lines = label_path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            class_id = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise TruthError(
                f"{label_path}:{number}: not 'class x_center y_center width height'"
            ) from None
        if not 0 <= class_id < len(class_names):
            raise TruthError(
                f"{label_path}:{number}: class {class_id} is not in data.yaml's "
                f"{len(class_names)} names"
            )
        if len(values) == 4:
            cx, cy, w, h = values
            xyxy = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            mask = None
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            xyxy = (min(xs), min(ys), max(xs), max(ys))
            points = [
                coordinate * size
                for pair in zip(xs, ys, strict=True)
                for coordinate, size in zip(
                    pair, (image.width, image.height), strict=True
                )
            ]
            mask = segmentation_rle([points], image)
        else:
            raise TruthError(
                f"{label_path}:{number}: {len(values)} numbers after the class: "
                "expected 4 (box) or an even number of at least 6 (polygon)"
            )
        scale = (image.width, image.height, image.width, image.height)
        absolute = [v * s for v, s in zip(xyxy, scale, strict=True)]
        clipped = fixes.clip(absolute, image)
        if clipped is None:
            continue
        rows.append(
            {
                "class_name": class_names[class_id],
                "x_min": clipped[0],
                "y_min": clipped[1],
                "x_max": clipped[2],
                "y_max": clipped[3],
                "mask": mask,
            }
        )
    return rows


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height after EXIF orientation, as the label table measures them."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as error:
        raise TruthError(
            f"{path}: cannot be read as an image: {error_reason(error)}"
        ) from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
