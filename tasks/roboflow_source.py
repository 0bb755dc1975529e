"""A Roboflow project (optionally one batch of it) as a source of images.

Discovery asks the project's search API, through the SDK, for image ids, names and
signed download URLs, page by page, and keeps that listing in the output's cache; pixels
are downloaded only when a chunk needs them, one image at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

import requests

from clients.roboflow import (
    SCHEME,
    RetryPolicy,
    RoboflowClient,
    RoboflowError,
    RoboflowTarget,
    with_retries,
)
from tasks.images import IMAGE_SUFFIXES, ImageRef, SourceError

PAGE_SIZE = 250


def is_roboflow(uri: str) -> bool:
    return uri.startswith(SCHEME)


def list_images(
    source: str, cache_dir: Path, *, api_key: str | None = None
) -> list[ImageRef]:
    """Every image of ``roboflow://WORKSPACE/PROJECT[/BATCH_ID]``, sorted by name.

    Each ref's URI is ``roboflow://WORKSPACE/PROJECT/image/ID``; its download URL is
    kept in ``cache_dir`` for ``fetch``.
    """
    try:
        target = RoboflowTarget.parse(source, extra="batch")
        client = RoboflowClient.resolve(api_key)
        project = client.open_project(target)
        hits = client.call(lambda: _search(project, target), what=f"list {source}")
    except RoboflowError as error:  # its message is safe: no key, no URL
        raise SourceError(str(error)) from None
    urls: dict[str, str] = {}
    refs = []
    for hit in hits:
        uri = f"{SCHEME}{target.workspace}/{target.project}/image/{hit['id']}"
        urls[uri] = hit["url"]
        refs.append(ImageRef(uri, _relative_name(hit)))
    _save_urls(cache_dir, target, urls)
    return sorted(refs, key=lambda ref: ref.relative_path)


def fetch(
    uri: str, cache_dir: Path, *, attempts: int = 4, backoff_seconds: float = 1.0
) -> Path:
    """The image behind ``uri`` as a local file in ``cache_dir`` (downloaded once)."""
    path = (
        cache_dir / "roboflow" / f"{hashlib.sha256(uri.encode()).hexdigest()[:32]}.img"
    )
    if path.exists():
        return path
    target = RoboflowTarget.parse(uri.rsplit("/image/", 1)[0])
    url = _load_urls(cache_dir, target).get(uri)
    if url is None:
        raise SourceError(f"{uri}: not in this run's Roboflow listing")

    def download() -> bytes:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        return response.content

    # A signed URL, without the API key; its signature stays out of messages all the
    # same, as no error text of requests (which quotes the URL) is passed on.
    data = with_retries(
        download,
        what=f"fetch {uri}",
        retry=RetryPolicy(attempts=attempts, backoff_s=backoff_seconds),
    )
    partial = path.with_suffix(".part")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data)
    partial.replace(path)
    return path


def _search(project: Any, target: RoboflowTarget) -> list[dict]:
    """Every hit of the project's (or its batch's) image search, all pages.

    A failed page retries the whole listing: the SDK's pager cannot resume, and
    listing again is harmless.
    """
    pages = project.search_all(
        limit=PAGE_SIZE,
        batch=target.extra is not None,
        batch_id=target.extra,
        fields=["id", "name", "url"],
    )
    return [hit for page in pages for hit in page]


def _relative_name(hit: dict) -> str:
    """The image's name, with its id added so two images called ``img.jpg`` both
    survive."""
    name = PurePosixPath(str(hit.get("name") or hit["id"])).name
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        suffix = ".jpg"
    return f"{stem}-{hit['id']}{suffix}"


def _listing_path(cache_dir: Path, target: RoboflowTarget) -> Path:
    digest = hashlib.sha256(f"{target.workspace}/{target.project}".encode()).hexdigest()
    return cache_dir / "roboflow" / f"listing-{digest[:16]}.json"


def _save_urls(cache_dir: Path, target: RoboflowTarget, urls: dict[str, str]) -> None:
    path = _listing_path(cache_dir, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(urls)
    path.write_text(json.dumps(known))


def _load_urls(cache_dir: Path, target: RoboflowTarget) -> dict[str, str]:
    path = _listing_path(cache_dir, target)
    return json.loads(path.read_text()) if path.exists() else {}
