"""The review page's side of the batch's review queue: OUT/review/queue.csv rows, and
thumbnails served by rank only (never by a path the request names)."""

from __future__ import annotations

import csv
from pathlib import Path

from fastapi.testclient import TestClient

from review_ui.app import create_app
from review_ui.jobs import ReviewSession
from tests.review_ui.conftest import LOCAL

ROWS = [
    (1, "a/<img onerror=alert(1)>.jpg", 2.5, "near_threshold;class_overlap", 3),
    (2, "no-labels.png", 1.0, "no_labels", 0),
    (3, "../../outside.jpg", 0.5, "mask_off_box", 1),
]


def _write_queue(out: Path) -> None:
    review = out / "review"
    (review / "thumbnails" / "a").mkdir(parents=True)
    with (review / "queue.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["rank", "image", "score", "reasons", "labels"])
        writer.writerows(ROWS)
    thumbnail = review / "thumbnails" / "a" / "<img onerror=alert(1)>.jpg"
    thumbnail.write_bytes(b"\xff\xd8jpeg")
    (out / "outside.jpg").write_bytes(b"\xff\xd8secret")


def test_the_queue_and_its_thumbnails_by_rank(tmp_path: Path):
    out = tmp_path / "out"
    client = TestClient(create_app(ReviewSession(out)), base_url=LOCAL)
    assert client.get("/api/review/queue").json() == []
    _write_queue(out)

    rows = client.get("/api/review/queue").json()
    assert [(r["rank"], r["image"], r["reasons"], r["thumbnail"]) for r in rows] == [
        (1, "a/<img onerror=alert(1)>.jpg", ["near_threshold", "class_overlap"], True),
        (2, "no-labels.png", ["no_labels"], False),
        (3, "../../outside.jpg", ["mask_off_box"], False),
    ]
    assert client.get("/api/state").json()["queue"] == rows
    thumb = client.get("/api/review/thumbnails/1")
    assert thumb.status_code == 200 and thumb.content == b"\xff\xd8jpeg"
    for rank in (2, 3, 4, -1):
        response = client.get(f"/api/review/thumbnails/{rank}")
        assert response.status_code == 404
        assert b"secret" not in response.content
