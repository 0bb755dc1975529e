"""The review queue: after a batch, the images most likely to need a human, ranked.

Four signs that a label may be wrong, each worth points (higher score: look first):
- ``near_threshold``: a label scoring less than ``NEAR_THRESHOLD`` above its class's
  threshold: a slightly different threshold would have dropped it. Each such label adds
  up to 1 point, more the closer it is (at the threshold: 1; 0.1 above: 0).
- ``class_overlap``: two labels of different classes on the same object (box IoU above
  ``OVERLAP_IOU``): the model could not decide. 1 point per pair.
- ``no_labels``: a readable image without any label: a miss, or an image that does not
  belong in the dataset. 1 point.
- ``mask_off_box``: a mask that does not fill its box (the mask's own box overlaps the
  label's box less than ``MASK_BOX_IOU``, or covers under ``MASK_MIN_FILL`` of it): the
  segmenter outlined something else than the detector found. 1 point per mask.
Classification labels cover the whole image, so only ``near_threshold`` and
``no_labels`` apply to them.

Written to ``OUT/review/``: ``queue.csv`` (columns ``QUEUE_COLUMNS``; the review page
and the Roboflow upload read it), ``review.md``, and the top images drawn with their
labels under ``thumbnails/`` (paths as ``tasks.render.rendered_path`` names them).
The label table is read one chunk shard at a time; only the queue stays in memory.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import supervision as sv
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.export_files import local_source, write_text_atomically
from tasks.images import DecodedImage, ImageRef, decode_image
from tasks.labels import (
    OutputLayout,
    frame_to_detections,
    read_image_shard,
    read_label_shard,
    shard_keys,
)
from tasks.markdown import markdown_cell, markdown_code
from tasks.masks import rle_area, rle_to_xyxy
from tasks.render import annotate_image, rendered_path
from tasks.settings import LabelSettings

QUEUE_COLUMNS = ["rank", "image", "score", "reasons", "labels"]
REASONS = ("near_threshold", "class_overlap", "no_labels", "mask_off_box")
NEAR_THRESHOLD = 0.1
OVERLAP_IOU = 0.7
MASK_BOX_IOU = 0.5
MASK_MIN_FILL = 0.1
DEFAULT_THUMBNAILS = 24
THUMBNAIL_SIDE = 480
LISTED = 100  # rows of review.md (queue.csv lists every queued image)


@dataclass
class QueuedImage:
    """One image that needs a look: why, and where its labels live (its shard)."""

    image: str  # relative path, as in the image manifest
    image_id: str
    source_uri: str
    score: float
    reasons: list[str]
    labels: int
    shard: str = ""  # the chunk key whose shards hold it (for drawing it later)
    thumbnail: str = ""  # its drawing, relative to OUT/review ("" if not drawn)


@dataclass
class ReviewQueue:
    """What ``write_review_queue`` wrote: every queued image, best first."""

    out: str
    images: int  # readable images looked at
    queued: list[QueuedImage]
    counts: dict[str, int]  # reason -> images with it


def review_dir(out: str | Path) -> Path:
    """``OUT/review/``: queue.csv, review.md, thumbnails/."""
    return Path(out) / "review"


def image_review_reasons(
    labels: pd.DataFrame,
    thresholds: dict[str, float],
    *,
    classification: bool = False,
) -> tuple[float, list[str]]:
    """One image's score and reasons (see the module docstring) from its label rows.

    ``thresholds`` gives each class's threshold (a class not in it counts as 0).
    """
    if labels.empty:
        return 1.0, ["no_labels"]
    score, reasons = 0.0, []
    limits = labels["class_name"].map(thresholds).fillna(0.0).to_numpy(dtype=float)
    margins = labels["confidence"].to_numpy(dtype=float) - limits
    near = margins[margins < NEAR_THRESHOLD]
    if len(near):
        score += float(np.sum(1.0 - np.clip(near, 0.0, None) / NEAR_THRESHOLD))
        reasons.append("near_threshold")
    if not classification:
        pairs = class_overlaps(labels)
        if pairs:
            score += pairs
            reasons.append("class_overlap")
        off = masks_off_box(labels)
        if off:
            score += off
            reasons.append("mask_off_box")
    return round(score, 6), reasons


def class_overlaps(labels: pd.DataFrame, *, iou: float = OVERLAP_IOU) -> int:
    """Pairs of labels of different classes whose boxes overlap more than ``iou``."""
    if len(labels) < 2:
        return 0
    xyxy = labels[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=float)
    overlaps = sv.box_iou_batch(xyxy, xyxy)
    names = labels["class_name"].to_numpy(dtype=object)
    different = names[:, None] != names[None, :]
    upper = np.triu(np.ones_like(different, dtype=bool), k=1)
    return int(np.sum((overlaps > iou) & different & upper))


def masks_off_box(labels: pd.DataFrame) -> int:
    """Masks whose own tight box overlaps the label's box less than ``MASK_BOX_IOU``,
    or that cover less than ``MASK_MIN_FILL`` of it (an empty mask included)."""
    with_mask = labels[labels["mask"].notna()]
    if with_mask.empty:
        return 0
    rles = [json.loads(text) for text in with_mask["mask"]]
    boxes = with_mask[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=float)
    mask_boxes = np.array([rle_to_xyxy(rle) for rle in rles], dtype=float)
    overlap = np.diag(sv.box_iou_batch(boxes, mask_boxes))
    box_areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    areas = np.array([rle_area(rle) for rle in rles], dtype=float)
    fill = np.divide(areas, box_areas, out=np.zeros_like(areas), where=box_areas > 0)
    return int(np.sum((overlap < MASK_BOX_IOU) | (fill < MASK_MIN_FILL)))


def build_review_queue(
    out: str | Path,
    thresholds: dict[str, float],
    *,
    classification: bool = False,
) -> ReviewQueue:
    """Score every readable image of ``out``, one chunk shard at a time; the queued
    ones (score above 0) best first, ties by path."""
    queued: list[QueuedImage] = []
    counts = dict.fromkeys(REASONS, 0)
    looked_at = 0
    for shard, images, labels in iter_shards(OutputLayout(out)):
        groups = dict(list(labels.groupby(["image_id", "source_uri"], sort=False)))
        readable = images[images["skipped_reason"].isna()]
        for row in readable.itertuples(index=False):
            rows = groups.get((row.image_id, row.source_uri), labels.iloc[0:0])
            score, reasons = image_review_reasons(
                rows, thresholds, classification=classification
            )
            looked_at += 1
            for reason in reasons:
                counts[reason] += 1
            if reasons:
                queued.append(
                    QueuedImage(
                        image=str(row.relative_path),
                        image_id=str(row.image_id),
                        source_uri=str(row.source_uri),
                        score=score,
                        reasons=reasons,
                        labels=len(rows),
                        shard=shard,
                    )
                )
    queued.sort(key=lambda entry: (-entry.score, entry.image))
    return ReviewQueue(out=str(out), images=looked_at, queued=queued, counts=counts)


def iter_shards(
    layout: OutputLayout, keys: Sequence[str] | None = None
) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(chunk key, image manifest rows, label rows) per chunk (of ``keys``, if
    given), one chunk at a time."""
    for key in shard_keys(layout):
        if keys is None or key in keys:
            yield key, read_image_shard(layout, key), read_label_shard(layout, key)


def queue_to_csv(queue: ReviewQueue) -> str:
    """``queue.csv``: ``rank,image,score,reasons,labels``, rank 1 first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(QUEUE_COLUMNS)
    for rank, entry in enumerate(queue.queued, start=1):
        writer.writerow(
            [
                rank,
                entry.image,
                f"{entry.score:g}",
                ";".join(entry.reasons),
                entry.labels,
            ]
        )
    return buffer.getvalue()


def read_queue_csv(path: str | Path) -> pd.DataFrame:
    """A ``queue.csv`` back as a table (``image`` as text, whatever it looks like)."""
    return pd.read_csv(
        path, dtype={"image": str, "reasons": str}, keep_default_na=False
    )


def draw_thumbnails(
    queue: ReviewQueue, class_names: list[str], *, top: int = DEFAULT_THUMBNAILS
) -> list[str]:
    """Draw the labels of the first ``top`` queued images into
    ``OUT/review/thumbnails/`` (the folder is replaced); paths written, relative to
    ``OUT/review``. An image that can no longer be read is left out."""
    layout = OutputLayout(queue.out)
    folder = review_dir(queue.out) / "thumbnails"
    if folder.exists():
        shutil.rmtree(folder)
    wanted = queue.queued[:top]
    by_shard: dict[str, list[QueuedImage]] = {}
    for entry in wanted:
        by_shard.setdefault(entry.shard, []).append(entry)
    written = []
    for key, _, labels in iter_shards(layout, list(by_shard)):
        for entry in by_shard[key]:
            rows = labels[
                (labels["image_id"] == entry.image_id)
                & (labels["source_uri"] == entry.source_uri)
            ]
            path = _draw_one(layout, entry, rows, class_names, folder)
            if path is not None:
                entry.thumbnail = path.relative_to(folder.parent).as_posix()
                written.append(entry.thumbnail)
    return written


def _draw_one(
    layout: OutputLayout,
    entry: QueuedImage,
    rows: pd.DataFrame,
    class_names: list[str],
    folder: Path,
) -> Path | None:
    try:
        local = local_source(entry.source_uri, layout.root)
        target = rendered_path(folder, entry.image)
    except Exception:  # a thumbnail that cannot be fetched must not fail the run
        return None
    decoded = decode_image(ImageRef(str(local), entry.image))
    if not isinstance(decoded, DecodedImage):
        return None
    drawn = annotate_image(decoded.image, frame_to_detections(rows), class_names)
    drawn.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    target.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(target, format="JPEG", quality=85)
    return target


def render_review_markdown(queue: ReviewQueue, *, thumbnails: bool = True) -> str:
    """review.md: how many images need a look and why, then the first of them."""
    lines = [
        "# Images to review",
        "",
        f"- Output: {markdown_code(queue.out)}",
        f"- Images looked at: {queue.images}; queued: {len(queue.queued)}",
        f"- Labels within {NEAR_THRESHOLD:g} of their class's threshold "
        f"(near\\_threshold): {queue.counts['near_threshold']} image(s)",
        f"- Labels of different classes overlapping (IoU > {OVERLAP_IOU:g}, "
        f"class\\_overlap): {queue.counts['class_overlap']} image(s)",
        f"- Images without labels (no\\_labels): {queue.counts['no_labels']}",
        f"- Masks far from their box (mask\\_off\\_box): "
        f"{queue.counts['mask_off_box']} image(s)",
        "",
    ]
    if not queue.queued:
        return "\n".join([*lines, "Nothing to review.", ""])
    lines += [
        "| Rank | Image | Score | Reasons | Labels |"
        + (" Thumbnail |" if thumbnails else ""),
        "|---:|---|---:|---|---:|" + ("---|" if thumbnails else ""),
    ]
    for rank, entry in enumerate(queue.queued[:LISTED], start=1):
        cells = [
            str(rank),
            markdown_cell(entry.image),  # a code span would not stop a '|'
            f"{entry.score:g}",
            markdown_cell(", ".join(entry.reasons)),
            str(entry.labels),
        ]
        if thumbnails:
            link = entry.thumbnail
            cells.append(f"![rank {rank}](<{quote(link)}>)" if link else "")
        lines.append("| " + " | ".join(cells) + " |")
    if len(queue.queued) > LISTED:
        lines += ["", f"... and {len(queue.queued) - LISTED} more in queue.csv."]
    return "\n".join([*lines, ""])


def write_review_queue(
    out: str | Path,
    settings: LabelSettings,
    *,
    top: int = DEFAULT_THUMBNAILS,
) -> ReviewQueue:
    """Rank the images of ``out`` (thresholds and task from ``settings``), draw the
    first ``top`` and write queue.csv and review.md under ``OUT/review/``."""
    names = list(settings.ontology.class_names)
    queue = build_review_queue(
        out,
        settings.thresholds.for_classes(names),
        classification=settings.model.task in CLASSIFICATION_TASKS,
    )
    folder = review_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    draw_thumbnails(queue, names, top=top)
    # The review page may read these while a run writes them: never half a file.
    write_text_atomically(folder / "queue.csv", queue_to_csv(queue))
    write_text_atomically(folder / "review.md", render_review_markdown(queue))
    return queue


@task(name="review-queue", cache_policy=NO_CACHE)
def review_queue_task(out: str, settings: LabelSettings) -> ReviewQueue:
    """``write_review_queue``, and its summary as an artifact on the flow run."""
    queue = write_review_queue(out, settings)
    create_markdown_artifact(
        markdown=render_review_markdown(queue, thumbnails=False),
        key="autolabel-review-queue",
        description="Images most likely to need a human, ranked",
    )
    return queue
