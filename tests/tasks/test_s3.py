"""S3 listing, fetching and uploading against a real S3-compatible server on 127.0.0.1
(moto's threaded server), through boto3 exactly as users' buckets are reached."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tasks.images import SourceError
from tasks.s3 import cache_path, fetch, list_images, upload_folder


@pytest.fixture
def client(s3_test_client):
    return s3_test_client


def _jpeg(color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_listing_pages_past_1000_objects_and_keeps_only_images(client):
    client.create_bucket(Bucket="many")
    body = _jpeg()
    for i in range(1005):
        client.put_object(Bucket="many", Key=f"batch/img{i:04d}.jpg", Body=body)
    client.put_object(Bucket="many", Key="batch/notes.txt", Body=b"x")
    client.put_object(Bucket="many", Key="other/elsewhere.jpg", Body=body)
    client.put_object(Bucket="many", Key="batchmate/not-below-prefix.jpg", Body=body)

    refs = list_images("s3://many/batch", client=client)

    assert len(refs) == 1005
    assert refs[0].uri == "s3://many/batch/img0000.jpg"
    assert refs[0].relative_path == "img0000.jpg"
    assert refs[-1].relative_path == "img1004.jpg"


def test_fetch_caches_under_hashed_names_whatever_the_key(client, tmp_path):
    client.create_bucket(Bucket="odd")
    keys = ["../../escape.jpg", "/abs/olute.jpg", "ünï cødé/ f.jpg", "a/../../b.jpg"]
    for key in keys:
        client.put_object(Bucket="odd", Key=key, Body=_jpeg())
    cache = tmp_path / "cache"
    for ref in list_images("s3://odd", client=client):
        path = fetch(ref.uri, cache, client=client)
        assert path.parent == cache / "s3"
        assert path == cache_path(ref.uri, cache)
        assert Image.open(path).size == (8, 6)
    assert sorted(p.suffix for p in (cache / "s3").iterdir()) == [".jpg"] * len(keys)
    assert not (tmp_path / "escape.jpg").exists()


def test_an_object_over_the_size_cap_is_never_downloaded(client, tmp_path, monkeypatch):
    client.create_bucket(Bucket="big")
    client.put_object(Bucket="big", Key="small.jpg", Body=_jpeg())
    client.put_object(Bucket="big", Key="huge.jpg", Body=b"\xff\xd8" + b"0" * 4096)
    monkeypatch.setenv("AUTOLABEL_MAX_IMAGE_BYTES", "1024")
    cache = tmp_path / "cache"
    assert fetch("s3://big/small.jpg", cache, client=client).is_file()
    with pytest.raises(ValueError, match="file too large"):
        fetch("s3://big/huge.jpg", cache, client=client)
    assert len(list((cache / "s3").iterdir())) == 1  # nothing of the big one


def test_a_missing_bucket_is_a_clear_source_error(client):
    with pytest.raises(SourceError, match="cannot list s3://nope/"):
        list_images("s3://nope/x", client=client)


def test_exports_upload_with_their_folder_structure(client, tmp_path):
    client.create_bucket(Bucket="exports")
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "annotations.json").write_text("{}")
    (tmp_path / "report.md").write_text("# r")
    # What stays on this machine: cached sources, the lock, page-trained models.
    for local_only in (".cache/s3/x.jpg", ".autolabel.lock", "models/m/last.pt"):
        (tmp_path / local_only).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / local_only).write_text("local")
    assert upload_folder(tmp_path, "s3://exports/run1", client=client) == 2
    keys = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket="exports")["Contents"]
    )
    assert keys == ["run1/coco/annotations.json", "run1/report.md"]
