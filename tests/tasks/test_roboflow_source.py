"""A Roboflow project as a source, through the real SDK against the local API stub."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tasks.images import SourceError
from tasks.roboflow_source import fetch, list_images

KEY = "testkey-source-7"


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_project_images_are_listed_page_by_page_and_fetched_lazily(
    roboflow_api, tmp_path, monkeypatch
):
    monkeypatch.setattr("tasks.roboflow_source.PAGE_SIZE", 2)
    for i in range(5):
        roboflow_api.host_image(
            f"id{i}", "img.jpg" if i < 2 else f"p{i}.png", _jpeg(40 * i)
        )
    cache = tmp_path / "cache"

    refs = list_images("roboflow://acme/cans", cache, api_key=KEY)

    assert [r.relative_path for r in refs] == [
        "img-id0.jpg",
        "img-id1.jpg",
        "p2-id2.png",
        "p3-id3.png",
        "p4-id4.png",
    ]
    assert refs[0].uri == "roboflow://acme/cans/image/id0"
    searches = [r for r in roboflow_api.requests if r.path.endswith("/search")]
    assert len(searches) == 3  # 2 + 2 + 1
    assert not [r for r in roboflow_api.requests if r.path.startswith("/files")]

    path = fetch(refs[3].uri, cache, backoff_seconds=0.01)
    assert Image.open(path).getpixel((0, 0))[0] == pytest.approx(120, abs=3)
    fetch(refs[3].uri, cache)  # cached: no second download
    assert len([r for r in roboflow_api.requests if r.path.startswith("/files")]) == 1


def test_downloads_retry_on_server_errors(roboflow_api, tmp_path):
    roboflow_api.host_image("a", "a.jpg", _jpeg(10))
    (ref,) = list_images("roboflow://acme/cans", tmp_path, api_key=KEY)
    roboflow_api.fail_next("file", 503, 429)
    assert fetch(ref.uri, tmp_path, backoff_seconds=0.01).stat().st_size > 0


@pytest.mark.parametrize("source", ["roboflow://acme", "roboflow://acme/cans/b/extra"])
def test_bad_sources_are_source_errors(source, tmp_path):
    with pytest.raises(SourceError, match="expected roboflow://WORKSPACE/PROJECT"):
        list_images(source, tmp_path, api_key=KEY)


def test_an_unknown_project_is_a_clear_error_without_the_key(roboflow_api, tmp_path):
    with pytest.raises(SourceError, match="cannot open roboflow://acme/other") as error:
        list_images("roboflow://acme/other", tmp_path, api_key=KEY)
    assert KEY not in str(error.value)
