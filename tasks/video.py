"""Videos as sampled frames: each frame becomes an ordinary image named after its video
and time stamp, so every later stage (labeling, exports, uploads) treats it like a
photo.

Frames are decoded once per (video file, fps) into a cache folder under the output and
reused by reruns. Decoding goes through supervision's frame generator, striding over
frames so that only the sampled ones are kept.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from PIL import Image

from tasks.images import ImageRef

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})


def is_video(path: str | Path) -> bool:
    return PurePosixPath(str(path)).suffix.lower() in VIDEO_SUFFIXES


def frame_name(relative_video_path: str, seconds: float) -> str:
    """``clips/street.mp4`` at 12.5 s -> ``clips/street_t000012.500s.jpg``."""
    video = PurePosixPath(relative_video_path)
    return str(video.with_name(f"{video.stem}_t{seconds:010.3f}s.jpg"))


def sample_frames(
    video_path: Path, relative_path: str, *, fps: float, cache_dir: Path
) -> list[ImageRef]:
    """JPEG frames of ``video_path`` every ``1 / fps`` seconds, cached under
    ``cache_dir``.

    Raises:
        ValueError: If ``fps`` is not positive or the file cannot be decoded as a video.
    """
    import supervision as sv

    if fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    folder = cache_dir / "frames" / _video_key(video_path, fps)
    if not folder.is_dir():
        try:
            info = sv.VideoInfo.from_video_path(str(video_path))
        except Exception as error:  # cv2/PyAV raise many kinds
            raise ValueError(
                f"{relative_path}: cannot read as a video ({error})"
            ) from None
        video_fps = info.fps if info.fps and info.fps > 0 else fps
        stride = max(1, round(video_fps / fps))
        _extract(video_path, relative_path, folder, stride=stride, video_fps=video_fps)
    return [
        ImageRef(
            str(path), (PurePosixPath(relative_path).parent / path.name).as_posix()
        )
        for path in sorted(folder.glob("*.jpg"))
    ]


def _extract(
    video_path: Path, relative_path: str, folder: Path, *, stride: int, video_fps: float
) -> None:
    """Write the frames into a temporary folder, then rename it: a crash leaves no half
    folder that a rerun would take as complete."""
    import supervision as sv

    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    try:
        frames = sv.get_video_frames_generator(str(video_path), stride=stride)
        for index, frame in enumerate(frames):
            seconds = index * stride / video_fps
            name = PurePosixPath(frame_name(relative_path, seconds)).name
            Image.fromarray(frame[:, :, ::-1]).save(partial / name, quality=95)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _video_key(video_path: Path, fps: float) -> str:
    stat = video_path.stat()
    text = f"{video_path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{fps}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]
