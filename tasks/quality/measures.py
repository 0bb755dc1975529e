"""Per-row measures the quality suite cannot compute itself: twins and mask geometry.

GX expectations compare columns; whether a box has a same-class twin, or whether a mask
lies inside its box, needs numpy and pycocotools. These functions compute such a column
per label row, and the suite then only checks its values.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd


def near_duplicate_flags(labels: pd.DataFrame, iou_threshold: float) -> np.ndarray:
    """True for a box that overlaps a same-class box of its image with IoU above the
    threshold and scores no higher (the one NMS would drop; ties flag the later row)."""
    flags = np.zeros(len(labels), dtype=bool)
    if len(labels) < 2:
        return flags
    keys = labels["image_id"].astype(str) + "\0" + labels["class_name"].astype(str)
    order = np.argsort(keys.to_numpy(), kind="stable")
    sorted_keys = keys.to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    boxes = labels[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
    scores = labels["confidence"].to_numpy(dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        if end - start < 2:
            continue
        rows = order[start:end]
        iou = _iou_matrix(boxes[rows])
        first, second = np.nonzero(np.triu(iou > iou_threshold, k=1))
        for a, b in zip(rows[first], rows[second], strict=True):
            flags[b if scores[a] >= scores[b] else a] = True
    return flags


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``boxes`` (x_min, y_min, x_max, y_max), in float64.

    Not ``sv.box_iou_batch``: it gives the same values for every case here (inverted,
    empty, NaN and infinite boxes included) but returns float32, and the check compares
    against ``duplicate_iou`` with ``>``: an IoU of 0.9000000005 rounds to 0.9 in
    float32 and would no longer count as a twin at the default 0.9. The label table
    stores float64 coordinates, so the check keeps float64 to the comparison.
    """
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    union = area[:, None] + area[None, :] - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, overlap / union, 0.0)


def mask_measures(
    frame: pd.DataFrame, tolerance: float, *, require: bool
) -> tuple[list, list]:
    """Per row: the mask's area in pixels, and whether it has the image's size and lies
    within its box (give or take ``tolerance`` pixels). A row without a mask gets None
    (not checked) unless masks are required; an unreadable mask has area 0."""
    from pycocotools import mask as mask_utils

    areas: list[float | None] = []
    inside: list[bool | None] = []
    for row in frame[
        ["mask", "width", "height", "x_min", "y_min", "x_max", "y_max"]
    ].itertuples(index=False):
        if is_missing(row.mask):
            areas.append(0.0 if require else None)
            inside.append(None)  # reported as empty (when required), not twice
            continue
        rle = _as_rle(row.mask, mask_utils)
        if rle is None:
            areas.append(0.0)
            inside.append(None)
            continue
        areas.append(float(mask_utils.area(rle)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        right, bottom = x + w, y + h
        size_ok = list(rle["size"]) == [int(row.height), int(row.width)]
        inside.append(
            bool(
                size_ok
                and (w == 0 or x >= np.floor(row.x_min) - tolerance)
                and (w == 0 or right <= np.ceil(row.x_max) + tolerance)
                and (h == 0 or y >= np.floor(row.y_min) - tolerance)
                and (h == 0 or bottom <= np.ceil(row.y_max) + tolerance)
            )
        )
    return areas, inside


def _as_rle(value: Any, mask_utils: Any) -> dict | None:
    """A compressed COCO RLE from a dict or its JSON text; None if missing or bad."""
    try:
        if isinstance(value, str | bytes):
            value = json.loads(value)
        size = [int(v) for v in value["size"]]
        counts = value["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            return mask_utils.frPyObjects({"size": size, "counts": counts}, *size)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        rle = {"size": size, "counts": counts}
        mask_utils.area(rle)  # validates the counts
        return rle
    except Exception:  # noqa: BLE001 - any unreadable mask is the finding itself
        return None


def is_missing(value: Any) -> bool:
    """None, pandas' NA or a float NaN: a cell with no value."""
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and np.isnan(value))
    )
