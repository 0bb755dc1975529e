"""Annotated preview images: boxes, class and score drawn with supervision.

One color per class id (supervision's default palette looked up by class), so a class
has the same color on every image and in every re-render. Images are written as JPEG
under ``OUT/preview/images/`` mirroring the source tree; small thumbnails become data
URIs for the markdown artifact, which the Prefect UI shows inline.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path, PurePosixPath

import pandas as pd
import supervision as sv
from PIL import Image

from tasks.images import DecodedImage, ImageRef, decode_image
from tasks.labels import frame_to_detections

_JPEG_SUFFIXES = {".jpg", ".jpeg"}


def annotate_image(
    image: Image.Image, detections: sv.Detections, class_names: list[str]
) -> Image.Image:
    """A copy of ``image`` with each box (and mask) and its ``'class 0.87'`` label.

    Line width and text size follow the image size, so labels stay readable on both a
    thumbnail and a 4000 px photo.
    """
    scene = image.convert("RGB").copy()
    if len(detections) == 0:
        return scene
    resolution_wh = scene.size
    thickness = sv.calculate_optimal_line_thickness(resolution_wh=resolution_wh)
    text_scale = sv.calculate_optimal_text_scale(resolution_wh=resolution_wh)
    labels = [
        f"{class_names[class_id]} {confidence:.2f}"
        for class_id, confidence in zip(
            detections.class_id.tolist(), detections.confidence.tolist(), strict=True
        )
    ]
    lookup = sv.ColorLookup.CLASS
    if detections.mask is not None:  # segmentation: the mask, tinted, under the box
        scene = sv.MaskAnnotator(color_lookup=lookup, opacity=0.4).annotate(
            scene, detections
        )
    scene = sv.BoxAnnotator(thickness=thickness, color_lookup=lookup).annotate(
        scene, detections
    )
    return sv.LabelAnnotator(
        color_lookup=lookup, text_scale=text_scale, text_padding=max(2, thickness * 2)
    ).annotate(scene, detections, labels=labels)


def rendered_path(root: Path, relative_path: str) -> Path:
    """Where the annotated copy of ``relative_path`` goes under ``root``.

    JPEG files keep their name; others get ``.jpg`` appended (``a/x.png`` ->
    ``a/x.png.jpg``), so ``x.png`` and ``x.jpg`` of one folder do not collide.
    """
    path = PurePosixPath(relative_path)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"not a relative path inside the source: {relative_path!r}")
    if path.suffix.lower() not in _JPEG_SUFFIXES:
        path = path.with_name(f"{path.name}.jpg")
    return root.joinpath(*path.parts)


def render_images(
    manifest: pd.DataFrame,
    shown: pd.DataFrame,
    *,
    class_names: list[str],
    images_dir: Path,
) -> list[Path]:
    """Draw the kept labels on every readable sample image; returns the written files.

    Files of an earlier render that are not part of this sample are removed, so the
    folder always shows exactly the current preview.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    groups = dict(list(shown.groupby(["image_id", "source_uri"], sort=False)))
    written: list[Path] = []
    readable = manifest[manifest["skipped_reason"].isna()].sort_values("relative_path")
    for row in readable.itertuples(index=False):
        decoded = decode_image(ImageRef(row.source_uri, row.relative_path))
        if not isinstance(decoded, DecodedImage):
            continue  # gone or changed since the preview ran; the summary says why
        labels = groups.get((row.image_id, row.source_uri), shown.iloc[0:0])
        annotated = annotate_image(
            decoded.image, frame_to_detections(labels), class_names
        )
        path = rendered_path(images_dir, row.relative_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        annotated.save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
        written.append(path)
    _remove_others(images_dir, set(written))
    return written


def thumbnail_data_uri(path: Path, *, max_side: int = 320) -> str:
    """A small JPEG of ``path`` as a ``data:`` URI, for markdown shown in a browser."""
    with Image.open(path) as image:
        thumbnail = image.convert("RGB")
        thumbnail.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="JPEG", quality=75)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/jpeg;base64,{encoded}"


def _remove_others(images_dir: Path, keep: set[Path]) -> None:
    for path in sorted(images_dir.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
