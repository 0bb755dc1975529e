"""Re-upload of labeled images to a Roboflow project as one annotation batch.

Through the official ``roboflow`` SDK (see ``clients.roboflow`` for retries and key
redaction), plus an upload ledger so that a rerun continues where it stopped and never
uploads an image twice. Images in the review queue (``OUT/review/queue.csv``, see
``tasks.review_queue``) go up with the extra tag ``needs-review``, so a reviewer can
filter them in Roboflow.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.roboflow import RetryPolicy, RoboflowClient, RoboflowTarget
from tasks.export_coco import coco_dict
from tasks.export_files import local_source
from tasks.export_images import ExportImage, iter_export_images, plan_export
from tasks.labels import OutputLayout
from tasks.masks import mask_outlines, rle_to_mask
from tasks.review_queue import read_queue_csv, review_dir
from tasks.splits import ROBOFLOW_FOLDERS, Splits

REVIEW_TAG = "needs-review"


@dataclass
class UploadSummary:
    uploaded: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(
        default_factory=list
    )  # (relative path, reason)


class UploadLedger:
    """What has reached Roboflow already, per (project, image content hash)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS uploads (project TEXT NOT NULL,"
            " image_id TEXT NOT NULL,"
            " roboflow_id TEXT, annotated INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (project, image_id))"
        )
        self._db.commit()

    def state(self, project: str, image_id: str) -> tuple[str | None, bool]:
        row = self._db.execute(
            "SELECT roboflow_id, annotated FROM uploads"
            " WHERE project = ? AND image_id = ?",
            (project, image_id),
        ).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def record(
        self, project: str, image_id: str, roboflow_id: str, annotated: bool
    ) -> None:
        self._db.execute(
            "INSERT INTO uploads VALUES (?, ?, ?, ?)"
            " ON CONFLICT (project, image_id) DO UPDATE"
            " SET roboflow_id = excluded.roboflow_id, annotated = excluded.annotated",
            (project, image_id, roboflow_id, int(annotated)),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def image_annotation(image: ExportImage, class_names: list[str]) -> dict[str, str]:
    """One image's labels as the single-image COCO file Roboflow's upload API parses:
    boxes, and masks as polygons (the same COCO the export writes)."""
    coco = coco_dict(
        [image], class_names, "polygon", file_names=[Path(image.relative_path).name]
    )
    for annotation in coco["annotations"]:
        annotation["segmentation"] = _polygons_only(annotation.get("segmentation"))
    return {"name": "annotation.coco.json", "rawText": json.dumps(coco)}


def _polygons_only(segmentation: list | dict | None) -> list:
    """Polygons for Roboflow's importer, which is not known to read RLE: a mask that
    polygons cannot redraw exactly (the export keeps its RLE) goes as its outlines."""
    if not isinstance(segmentation, dict):
        return segmentation or []
    return mask_outlines(rle_to_mask(segmentation))


def upload_to_roboflow(
    out: str,
    target: str,
    class_names: list[str],
    *,
    batch_name: str,
    tags: list[str],
    split: str = "train",
    splits: Splits | None = None,
    api_key: str | None = None,
    attempts: int = 5,
    backoff_seconds: float = 1.0,
) -> UploadSummary:
    """Upload every labeled image of ``out`` with its annotation to ``target``.

    Images already recorded in the upload ledger are skipped, and so is a second file
    with the same content; an image whose upload worked but whose annotation did not
    gets only its annotation on the next run. One image failing never stops the others.
    With ``splits``, each image goes to its own split (``train``, ``valid`` or
    ``test``, as in the exports) instead of ``split``. Images listed in
    ``OUT/review/queue.csv`` also get the tag ``needs-review``.

    Labels are read one chunk at a time, as the exports read them; so a corrupt label
    table (which the exports, run before this, would already have refused) stops the
    upload at its chunk, and a rerun continues from the upload ledger.
    """
    destination = RoboflowTarget.parse(target)
    client = RoboflowClient.resolve(
        api_key, retry=RetryPolicy(attempts=attempts, backoff_s=backoff_seconds)
    )
    layout = OutputLayout(out)
    # One chunk's labels at a time, as the exports read them: nothing per dataset.
    images = iter_export_images(layout, plan_export(layout), class_names=class_names)
    to_review = queued_images(out)
    summary = UploadSummary()
    project = client.open_project(destination)
    ledger = UploadLedger(layout.root / "roboflow_uploads.sqlite")
    try:
        for image in images:
            image_id = image.image_id
            roboflow_id, annotated = ledger.state(destination.project, image_id)
            if annotated:
                summary.skipped += 1
                continue
            image_split = (
                ROBOFLOW_FOLDERS[splits.split_of(image_id)] if splits else split
            )
            try:
                if roboflow_id is None:
                    roboflow_id = client.call(
                        lambda image=image, image_split=image_split: (
                            project.upload_image(
                                str(local_source(image.source_uri, layout.root)),
                                split=image_split,
                                batch_name=batch_name,
                                tag_names=_tags_of(image, tags, to_review),
                            )[0]["id"]
                        ),
                        what=f"upload {image.relative_path}",
                    )
                    ledger.record(destination.project, image_id, roboflow_id, False)
                annotation = image_annotation(image, class_names)
                client.call(
                    lambda roboflow_id=roboflow_id, annotation=annotation: (
                        project.save_annotation(
                            annotation, image_id=roboflow_id, job_name=batch_name
                        )
                    ),
                    what=f"annotate {image.relative_path}",
                )
                ledger.record(destination.project, image_id, roboflow_id, True)
                summary.uploaded += 1
            except Exception as error:  # one bad image must not stop the batch
                summary.failed.append((image.relative_path, client.describe(error)))
    finally:
        ledger.close()
    return summary


def queued_images(out: str | Path) -> set[str]:
    """The relative paths in ``OUT/review/queue.csv``; none without the file."""
    path = review_dir(out) / "queue.csv"
    if not path.is_file():
        return set()
    return set(read_queue_csv(path)["image"])


def _tags_of(image: ExportImage, tags: list[str], to_review: set[str]) -> list[str]:
    if image.relative_path in to_review and REVIEW_TAG not in tags:
        return [*tags, REVIEW_TAG]
    return tags


@task(name="upload-to-roboflow", cache_policy=NO_CACHE)
def upload_to_roboflow_task(
    out: str, target: str, class_names: list[str], **options: Any
):
    """``upload_to_roboflow`` as a task (the key is read inside, never a parameter)."""
    return upload_to_roboflow(out, target, class_names, **options)
