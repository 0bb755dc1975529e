"""Ground truth from COCO JSON files (one file, or a Roboflow export's splits).

Kept apart from the YOLO reader: COCO names images by file name and boxes by
``[x, y, w, h]`` pixels with polygon or RLE segmentations, and its errors are about
JSON keys; none of that concerns a YOLO folder. ``segmentation_rle`` is the one piece
the YOLO reader borrows: its polygons become COCO polygons, then the same RLE text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tasks.truth_model import (
    BoxFixes,
    GroundTruth,
    TruthError,
    TruthImage,
    error_reason,
)


def read_coco_truth(files: Sequence[Path], *, source: Path) -> GroundTruth:
    """Boxes (and polygon/RLE masks) of one or more COCO JSON files.

    Several files (a Roboflow export's splits) are one truth: image paths keep the
    file's folder relative to ``source`` (``train/a.jpg``) and classes are joined by
    name. A category that is only the supercategory of others and has no boxes (the
    project-named one Roboflow's exports carry) is no class.
    """
    images: list[TruthImage] = []
    rows: list[dict] = []
    class_names: list[str] = []
    fixes = BoxFixes()
    supercategories: set[str] = set()
    for file in files:
        data = _load_json(file)
        prefix = _relative_folder(file.parent, source)
        try:
            categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            supercategories |= {
                str(c["supercategory"])
                for c in data["categories"]
                if c.get("supercategory") not in (None, "", "none")
            }
            index_of: dict[int, int] = {}
            for image in data["images"]:
                index_of[int(image["id"])] = len(images)
                images.append(_coco_image(image, folder=file.parent, prefix=prefix))
            for name in categories.values():
                if name not in class_names:
                    class_names.append(name)
            for annotation in data["annotations"]:
                _check_references(annotation, index_of, categories)
                image = images[index_of[int(annotation["image_id"])]]
                row = _coco_box(annotation, categories, image, fixes)
                if row is not None:
                    row["truth_image"] = index_of[int(annotation["image_id"])]
                    rows.append(row)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise TruthError(
                f"{file}: not a COCO detection file ({error_reason(error)})"
            ) from None
    used = {row["class_name"] for row in rows}
    class_names = [n for n in class_names if n in used or n not in supercategories]
    return GroundTruth.from_rows(source, images, rows, class_names, fixes)


def _check_references(
    annotation: dict, index_of: dict[int, int], categories: dict[int, str]
) -> None:
    """An annotation naming an image or category the file lacks, said as such (not
    as a bare missing key)."""
    for key, known in (("image_id", index_of), ("category_id", categories)):
        if int(annotation[key]) not in known:
            raise ValueError(
                f"annotation {annotation.get('id')}: {key} {annotation[key]} is not "
                "in the file"
            )


def _load_json(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TruthError(f"{file}: cannot be read: {error_reason(error)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TruthError(
            f"{file}: malformed JSON: {error.msg} at line {error.lineno} column "
            f"{error.colno}"
        ) from None
    if not isinstance(data, dict):
        raise TruthError(f"{file}: not a COCO file (the top level is not an object)")
    return data


def _relative_folder(folder: Path, source: Path) -> str:
    if source.is_file() or folder == source:
        return ""
    try:
        return folder.relative_to(source).as_posix()
    except ValueError:
        return ""


def _coco_image(image: dict, *, folder: Path, prefix: str) -> TruthImage:
    file_name = str(image["file_name"]).replace("\\", "/")
    width, height = int(image["width"]), int(image["height"])
    if width <= 0 or height <= 0:
        raise ValueError(f"image {file_name!r} has size {width}x{height}")
    candidates = [folder / file_name, folder / "images" / file_name]
    found = next((p for p in candidates if p.is_file()), None)
    path = f"{prefix}/{file_name}" if prefix else file_name
    return TruthImage.at(path, width, height, file=found)


def _coco_box(
    annotation: dict, categories: dict[int, str], image: TruthImage, fixes: BoxFixes
) -> dict | None:
    x, y, w, h = (float(v) for v in annotation["bbox"])
    xyxy = fixes.clip((x, y, x + w, y + h), image)
    if xyxy is None:
        return None
    return {
        "class_name": categories[int(annotation["category_id"])],
        "x_min": xyxy[0],
        "y_min": xyxy[1],
        "x_max": xyxy[2],
        "y_max": xyxy[3],
        "mask": segmentation_rle(annotation.get("segmentation"), image),
    }


def segmentation_rle(segmentation: object, image: TruthImage) -> str | None:
    """A COCO segmentation (polygons or RLE) as the label table's RLE JSON text."""
    if not segmentation:
        return None
    from pycocotools import mask as mask_utils

    height, width = image.height, image.width
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(
        segmentation.get("counts"), list
    ):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = dict(segmentation)
    else:
        return None
    counts = rle["counts"]
    return json.dumps(
        {
            "size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        },
        separators=(",", ":"),
    )
