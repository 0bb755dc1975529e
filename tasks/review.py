"""What the review page needs from a stored preview: candidates once, images by index.

The page (``review_ui``) filters candidates in the browser, so a slider answers
without a round trip. It must keep exactly the labels the batch would keep
(``tasks.thresholds.keep_labels``: per-class threshold, then NMS). Thresholds alone are
a comparison per candidate; NMS needs more, so each candidate comes with its
*suppressors*: the candidates of the same image that supervision's greedy NMS visits
before it (higher score) and that overlap it above the IoU (boxes, or masks where the
labels have masks), of the same class unless NMS is class-agnostic. The greedy rule
"keep a candidate that passes its threshold unless a kept suppressor covers it", applied
in that order, is then the batch's filter at any thresholds. One limit: candidates
with exactly equal scores are ordered by numpy's (unstable) argsort, over all
candidates here and over the thresholded ones in the batch, so where two exactly tied
candidates overlap, the one kept may differ (the counts do not, unless a third box
depends on which).

Images are addressed by their position in the preview's manifest, never by a path from
the request, so a URL cannot reach a file outside the preview's sample.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import supervision as sv

from tasks.credits import CreditRates, credit_kind
from tasks.images import DecodedImage, ImageRef, decode_image
from tasks.labels import frame_to_detections
from tasks.masks import mask_outlines, mask_to_coco_polygons, rle_to_mask
from tasks.preview import PreviewRecord, load_record, read_candidates, read_manifest
from tasks.sources import SourceOptions, discover, local_file

_IMAGE_KEY = ["image_id", "source_uri"]
DEFAULT_MAX_SIDE = 1600  # served image size: sharp on a screen, small on the wire


@dataclass(frozen=True)
class CreditEstimate:
    """What labeling the whole source would cost at most (already charged images of
    the dataset are not charged again, so the real figure can be lower)."""

    images: int
    rate: float
    credits: float


def estimate_credits(
    record: PreviewRecord,
    out: str,
    rates: CreditRates | None = None,
    options: SourceOptions | None = None,
) -> CreditEstimate:
    """Count the source's images and price them at the run's rate."""
    settings = record.settings
    rate = (rates or CreditRates()).rate(
        credit_kind(settings.model), settings.model.model
    )
    images = len(discover(record.source, out, options or record.sources))
    return CreditEstimate(images=images, rate=rate, credits=round(images * rate, 6))


def review_payload(out: str) -> dict[str, Any]:
    """The stored preview as the page draws it: classes, images and candidates.

    Raises:
        PreviewError: If ``out`` holds no preview.
    """
    record = load_record(out)
    settings = record.settings
    manifest = _images_in_order(out)
    candidates = read_candidates(out)
    index_of = {
        (row.image_id, row.source_uri): position
        for position, row in enumerate(manifest.itertuples(index=False))
    }
    rows: list[dict[str, Any]] = []
    for key, group in candidates.groupby(_IMAGE_KEY, sort=False):
        rows += _image_candidates(
            group,
            image=index_of[key],
            first=len(rows),
            nms=settings.nms,
            iou=settings.nms_iou,
        )
    names = settings.ontology.class_names
    return {
        "key": record.key,
        "source": record.source,
        "task": settings.model.task,
        "model": settings.model.model,
        "floor": record.floor,
        "nms": settings.nms,
        "nms_iou": settings.nms_iou,
        "seed": record.seed,
        "credits": record.credits,
        "classes": [
            {
                "name": c.name,
                "descriptions": list(c.descriptions),
                "threshold": settings.thresholds.for_class(c.name),
            }
            for c in settings.ontology.classes
        ],
        "images": [
            {
                "index": position,
                "name": str(row.relative_path),
                "width": int(row.width) if pd.notna(row.width) else None,
                "height": int(row.height) if pd.notna(row.height) else None,
                "skipped": None if pd.isna(row.skipped_reason) else row.skipped_reason,
            }
            for position, row in enumerate(manifest.itertuples(index=False))
        ],
        "candidates": rows,
        "class_names": names,
    }


def _images_in_order(out: str) -> pd.DataFrame:
    """The preview's images in the order the page numbers them (by relative path)."""
    manifest = read_manifest(out).sort_values("relative_path", kind="stable")
    return manifest.reset_index(drop=True)


def _image_candidates(
    group: pd.DataFrame, *, image: int, first: int, nms: str, iou: float
) -> list[dict[str, Any]]:
    """One image's candidates in NMS visiting order, each with its suppressors.

    The order is supervision's (``np.flip(argsort(score))``), and the overlaps are its
    own ``box_iou_batch`` / ``mask_iou_batch``, so ties and metrics match the batch.
    """
    detections = frame_to_detections(group)
    order = np.flip(detections.confidence.argsort())
    detections = detections[order]
    group = group.iloc[order]
    overlaps = _overlaps(detections) if nms != "none" else None
    rows = []
    for position in range(len(detections)):
        suppressors: list[int] = []
        if overlaps is not None:
            earlier = overlaps[position, :position] > iou
            if nms == "class":
                same = detections.class_id[:position] == detections.class_id[position]
                earlier &= same
            suppressors = [first + int(j) for j in np.flatnonzero(earlier)]
        row = group.iloc[position]
        rows.append(
            {
                "image": image,
                "class": str(row.class_name),
                "prompt": str(row.prompt),
                # The float32 score the batch compares (frame_to_detections), exactly.
                "score": float(detections.confidence[position]),
                "box": [float(v) for v in detections.xyxy[position]],
                "polygons": _polygons(row["mask"]),
                "suppressors": suppressors,
            }
        )
    return rows


def _overlaps(detections: sv.Detections) -> np.ndarray:
    if detections.mask is not None:
        return sv.mask_iou_batch(detections.mask, detections.mask)
    return sv.box_iou_batch(detections.xyxy, detections.xyxy)


def _polygons(mask_json: object) -> list[list[float]] | None:
    """A mask's outlines as flat ``[x0, y0, x1, y1, ...]`` lists for an SVG polygon
    (drawn with the even-odd rule, so the seams that splice holes in leave them open).
    """
    if not isinstance(mask_json, str):
        return None
    mask = rle_to_mask(json.loads(mask_json))
    polygons = mask_to_coco_polygons(mask)
    if polygons is None:  # not exact as polygons: the outer outlines still show it
        polygons = mask_outlines(mask)
    return polygons


def sample_image_jpeg(
    out: str,
    index: int,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    options: SourceOptions | None = None,
) -> bytes | None:
    """The preview's ``index``-th image (manifest order) as JPEG, EXIF-rotated like
    the labels' coordinates; None if there is no such readable image."""
    manifest = _images_in_order(out)
    if not 0 <= index < len(manifest):
        return None
    row = manifest.iloc[index]
    if pd.notna(row.skipped_reason):
        return None
    try:
        path = local_file(str(row.source_uri), out, options)
    except Exception:  # a remote copy that cannot be fetched: no image to show
        return None
    decoded = decode_image(ImageRef(str(path), str(row.relative_path)))
    if not isinstance(decoded, DecodedImage):
        return None
    image = decoded.image.convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
