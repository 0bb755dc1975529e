"""Where images come from: a local folder, an S3 prefix or a Roboflow project, with the
videos among them sampled into frames.

``discover`` lists a source's images as references (no pixels); ``localize`` gives a
chunk's remote images a local copy in the output's cache just before they are labeled,
so a bucket is never downloaded at once and exports find the same files again later.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks import roboflow_source, s3
from tasks.images import ImageRef, SourceError, discover_images
from tasks.video import VIDEO_SUFFIXES, is_video, sample_frames


class SourceOptions(BaseModel):
    """How to reach a source; a flow parameter next to the source itself."""

    model_config = ConfigDict(frozen=True)

    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible store (MinIO, SeaweedFS, ...)."
    )
    fps: float | None = Field(
        None, gt=0, description="Sample videos at this many frames per second."
    )


def cache_dir(out: str | Path) -> Path:
    """The output's cache of remote images and video frames."""
    return Path(out) / ".cache"


def canonical_source(source: str) -> str:
    """A source as runs record it: a URI as given, a local folder as its absolute path
    (so one folder is one dataset whatever the working directory)."""
    if "://" in source:
        return source
    return str(Path(source).expanduser().resolve())


def discover(
    source: str, out: str | Path | None, options: SourceOptions
) -> list[ImageRef]:
    """Every image of ``source`` (videos as frames when ``options.fps`` is set).

    ``out`` is the output folder whose cache keeps frames and listings; only a local
    folder without video sampling can do without one.
    """
    is_remote = s3.is_s3(source) or roboflow_source.is_roboflow(source)
    if out is None and (is_remote or options.fps):
        raise ValueError(f"{source}: needs an output folder for its cache")
    if s3.is_s3(source):
        client = _s3_client(options.s3_endpoint_url)
        refs = s3.list_images(source, client=client)
        if options.fps:
            refs += _s3_video_frames(source, out, options, client)
    elif roboflow_source.is_roboflow(source):
        refs = roboflow_source.list_images(source, cache_dir(out))
    else:
        refs = discover_images(source)
        if options.fps:
            refs += _local_video_frames(Path(source), out, options.fps)
    return sorted(refs, key=lambda ref: ref.relative_path)


def localize(
    refs: Iterable[ImageRef], out: str | Path, options: SourceOptions, workers: int = 8
) -> list[ImageRef]:
    """``refs`` with local copies of remote images (downloaded in parallel, cached).

    A download that fails marks its image with the reason instead of failing the chunk.
    """
    refs = list(refs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda ref: localize_one(ref, out, options), refs))


def local_file(uri: str, out: str | Path, options: SourceOptions | None = None) -> Path:
    """The local file holding the image at ``uri`` (its cache copy if remote)."""
    if s3.is_s3(uri):
        return s3.fetch(
            uri,
            cache_dir(out),
            client=_s3_client((options or SourceOptions()).s3_endpoint_url),
        )
    if roboflow_source.is_roboflow(uri):
        return roboflow_source.fetch(uri, cache_dir(out))
    return Path(uri)


def localize_one(ref: ImageRef, out: str | Path, options: SourceOptions) -> ImageRef:
    """``ref`` with a local copy if it is remote; a failed download sets ``problem``."""
    if ref.problem or not (s3.is_s3(ref.uri) or roboflow_source.is_roboflow(ref.uri)):
        return ref
    try:
        return replace(ref, local_path=str(local_file(ref.uri, out, options)))
    except Exception as error:  # one failed download must not stop the chunk
        return replace(ref, problem=f"cannot download: {error}")


def _local_video_frames(root: Path, out: str | Path, fps: float) -> list[ImageRef]:
    refs = []
    for dirpath, _, filenames in os.walk(root.expanduser().resolve()):
        for name in sorted(filenames):
            if is_video(name):
                path = Path(dirpath) / name
                relative = path.relative_to(root.expanduser().resolve()).as_posix()
                refs += _frames_or_problem(path, relative, fps, out)
    return refs


def _s3_video_frames(
    source: str, out: str | Path, options: SourceOptions, client
) -> list[ImageRef]:
    refs = []
    for video in s3.list_objects(source, client=client, suffixes=VIDEO_SUFFIXES):
        path = s3.fetch(video.uri, cache_dir(out), client=client)
        refs += _frames_or_problem(path, video.relative_path, options.fps or 1.0, out)
    return refs


def _frames_or_problem(
    path: Path, relative: str, fps: float, out: str | Path
) -> list[ImageRef]:
    try:
        return sample_frames(path, relative, fps=fps, cache_dir=cache_dir(out))
    except ValueError as error:
        return [ImageRef(str(path), relative, problem=str(error))]


@cache
def _s3_client(endpoint_url: str | None):
    return s3.s3_client(endpoint_url)


__all__ = [
    "SourceError",
    "SourceOptions",
    "cache_dir",
    "discover",
    "local_file",
    "localize",
]
