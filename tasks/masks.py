"""Masks as COCO run-length encodings, and the polygons COCO and YOLO files need.

The label table stores each mask as compressed COCO RLE (``pycocotools``): lossless, a
few hundred bytes for a typical object instead of a full bitmap, and readable by every
COCO tool. Polygons are made only at export time, in each format's own pixel convention:
- COCO (``pycocotools`` rasterises a polygon whose vertices lie on pixel EDGES):
  vertices are traced on the pixel-edge lattice, which reproduces the mask exactly,
  holes (bridged by zero-width seams) and separate parts (one polygon each) included;
- YOLO (Ultralytics and supervision rasterise with ``cv2.fillPoly``, vertices at pixel
  CENTRES): one polygon per instance, parts joined by seams as Ultralytics' own
  converter does. That is lossy by design (the format has one polygon per line).
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as coco_mask
import supervision as sv
from scipy.spatial import cKDTree
from supervision.dataset.utils import approximate_mask_with_polygons

Rle = dict  # {"size": [height, width], "counts": str}


def mask_to_rle(mask: np.ndarray) -> Rle:
    """Compressed COCO RLE of one bool (H, W) mask, ``counts`` as text (JSON-ready)."""
    encoded = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in encoded["size"]], "counts": _text(encoded)}


def masks_to_rles(masks: np.ndarray) -> list[Rle]:
    """RLE of each mask of a bool (N, H, W) stack, in one pycocotools call."""
    if len(masks) == 0:
        return []
    stacked = np.asfortranarray(np.transpose(masks, (1, 2, 0)), dtype=np.uint8)
    return [
        {"size": [int(v) for v in encoded["size"]], "counts": _text(encoded)}
        for encoded in coco_mask.encode(stacked)
    ]


def rle_to_mask(rle: Rle) -> np.ndarray:
    """The bool (H, W) mask of a compressed COCO RLE."""
    return coco_mask.decode(_pycoco(rle)).astype(bool)


def rle_area(rle: Rle) -> int:
    """Foreground pixel count, read from the runs without decoding the mask."""
    return int(coco_mask.area(_pycoco(rle)))


def rle_to_xyxy(rle: Rle) -> tuple[float, float, float, float]:
    """The mask's tight box (pixel edges), ``(0, 0, 0, 0)`` for an empty mask."""
    x, y, w, h = (float(v) for v in coco_mask.toBbox(_pycoco(rle)))
    return x, y, x + w, y + h


def mask_to_coco_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """COCO polygons (flat ``[x1, y1, x2, y2, ...]`` lists) that reproduce ``mask``
    exactly.

    Contours are traced on the mask upsampled twice, so that their vertices land on the
    original pixels' edges (``pycocotools``' convention) instead of their centres, which
    would shave half a pixel off every side. Holes are spliced into their outer contour
    by zero-width seams; each separate part is its own polygon.

    Returns:
        The polygons, ``[]`` for an empty mask, or None when polygons cannot reproduce
        the mask pixel for pixel (e.g. holes touching the outline only at a corner):
        the caller then keeps the RLE, which is always exact.
    """
    if not mask.any():
        return []
    ys, xs = np.nonzero(mask)
    top, left = int(ys.min()), int(xs.min())
    crop = mask[top : ys.max() + 1, left : xs.max() + 1]
    doubled = np.pad(np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1), 1)
    try:
        contours = approximate_mask_with_polygons(doubled, bridge_holes=True)
    except ValueError:  # no seam along foreground pixels for some hole
        return None
    offset = np.array([left, top], dtype=np.float64)
    polygons = [
        ((contour.astype(np.float64) - 1.0) / 2.0 + offset).ravel().tolist()
        for contour in contours
        if len(contour) >= 3
    ]
    height, width = mask.shape
    if not polygons:
        return None
    drawn = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    if _text(drawn) != mask_to_rle(mask)["counts"]:
        return None
    return polygons


def mask_outlines(mask: np.ndarray) -> list[list[float]]:
    """The mask's outer outlines as flat ``[x1, y1, ...]`` polygons (pixel centres,
    holes not cut out): what to draw or send where ``mask_to_coco_polygons`` cannot
    reproduce the mask exactly."""
    return [
        polygon.astype(float).ravel().tolist()
        for polygon in sv.mask_to_polygons(mask)
        if len(polygon) >= 3
    ]


def mask_to_yolo_polygon(mask: np.ndarray) -> np.ndarray | None:
    """One polygon (K, 2) of pixel-centre vertices for a YOLO segmentation line.

    YOLO has one polygon per object, so holes are spliced in by seams along foreground
    pixels (exact under ``cv2.fillPoly``) and separate parts are joined by seams to
    their nearest neighbour (each such seam adds a one-pixel line of foreground when
    drawn).

    Returns:
        The polygon, or None for a mask without a contour of three or more points
        (empty, or thinner than a pixel everywhere).
    """
    if not mask.any():
        return None
    try:
        parts = approximate_mask_with_polygons(mask, bridge_holes=True)
    except ValueError:  # a hole without a seam along foreground: holes as extra parts
        parts = approximate_mask_with_polygons(mask)
    parts = [part for part in parts if len(part) >= 3]
    if not parts:
        return None
    parts.sort(key=len, reverse=True)
    return join_polygons(parts)


def join_polygons(parts: list[np.ndarray]) -> np.ndarray:
    """Chain polygons into one by zero-width seams between their closest vertices.

    Each part is entered at its vertex nearest to the polygon built so far, walked round
    and left the same way, so the outline visits every part once.
    """
    joined = np.asarray(parts[0], dtype=np.float64)
    for part in parts[1:]:
        part = np.asarray(part, dtype=np.float64)
        distances, nearest = cKDTree(joined).query(part)
        j = int(np.argmin(distances))
        i = int(nearest[j])
        joined = np.concatenate(
            [joined[: i + 1], part[j:], part[: j + 1], joined[i:]], axis=0
        )
    return joined


def _text(encoded: dict) -> str:
    counts = encoded["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


def _pycoco(rle: Rle) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
