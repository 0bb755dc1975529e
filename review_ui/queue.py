"""The batch's review queue as the page shows it: rows of ``OUT/review/queue.csv``
(written by ``tasks.review_queue``) and their drawn thumbnails."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tasks.render import rendered_path

MAX_ROWS = 100


def _review_dir(out: Path) -> Path:
    return Path(out) / "review"


def read_queue(out: Path, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` rows: rank, image, score, reasons (a list), labels, and
    whether a thumbnail was drawn. Empty when there is no (readable) queue."""
    path = _review_dir(out) / "queue.csv"
    if not path.is_file():
        return []
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                if len(rows) >= limit:
                    break
                rank = int(row["rank"])
                rows.append(
                    {
                        "rank": rank,
                        "image": row["image"],
                        "score": float(row["score"]),
                        "reasons": [r for r in row["reasons"].split(";") if r],
                        "labels": int(row["labels"] or 0),
                        "thumbnail": _thumbnail_path(out, row["image"]) is not None,
                    }
                )
    except (OSError, KeyError, ValueError):
        return rows
    return rows


def queue_thumbnail(out: Path, rank: int) -> Path | None:
    """The thumbnail of the queue row ``rank`` (looked up by rank, never by a path the
    request names)."""
    for row in read_queue(out, limit=MAX_ROWS):
        if row["rank"] == rank:
            return _thumbnail_path(out, row["image"])
    return None


def _thumbnail_path(out: Path, image: str) -> Path | None:
    folder = (_review_dir(out) / "thumbnails").resolve()
    try:
        path = rendered_path(folder, image).resolve()
    except ValueError:
        return None
    if not path.is_relative_to(folder) or not path.is_file():
        return None
    return path
