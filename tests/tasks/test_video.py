"""Videos become sampled frames named after the video and the time stamp."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from tasks.video import frame_name, sample_frames


@pytest.fixture
def video(tmp_path):
    """A 3-second, 10 fps video whose frame i is a flat gray of brightness 20 * i."""
    path = tmp_path / "clips" / "street.mp4"
    path.parent.mkdir()
    info = sv.VideoInfo(width=64, height=48, fps=10, total_frames=30)
    with sv.VideoSink(str(path), info, codec="mp4v") as sink:
        for i in range(30):
            sink.write_frame(np.full((48, 64, 3), (i * 8) % 256, dtype=np.uint8))
    return path


def test_frames_are_sampled_at_the_asked_rate_and_named_by_time(video, tmp_path):
    refs = sample_frames(video, "clips/street.mp4", fps=2, cache_dir=tmp_path / "cache")

    assert [r.relative_path for r in refs] == [
        "clips/street_t000000.000s.jpg",
        "clips/street_t000000.500s.jpg",
        "clips/street_t000001.000s.jpg",
        "clips/street_t000001.500s.jpg",
        "clips/street_t000002.000s.jpg",
        "clips/street_t000002.500s.jpg",
    ]
    brightness = [np.asarray(Image.open(r.uri)).mean() for r in refs]
    expected = [
        (i * 5 * 8) % 256 for i in range(6)
    ]  # every 5th frame of the 10 fps video
    assert brightness == pytest.approx(expected, abs=6)


def test_frames_are_cached_and_reused(video, tmp_path):
    first = sample_frames(video, "clips/street.mp4", fps=1, cache_dir=tmp_path / "c")
    stamps = [r.uri for r in first]
    again = sample_frames(video, "clips/street.mp4", fps=1, cache_dir=tmp_path / "c")
    assert [r.uri for r in again] == stamps
    assert len(first) == 3


@pytest.mark.parametrize(
    ("seconds", "name"), [(0, "a_t000000.000s.jpg"), (61.25, "a_t000061.250s.jpg")]
)
def test_frame_names(seconds, name):
    assert frame_name("a.mov", seconds) == name


def test_not_a_video_is_a_clear_error(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("no video here")
    with pytest.raises(ValueError, match="fake.mp4: cannot read as a video"):
        sample_frames(fake, "fake.mp4", fps=1, cache_dir=tmp_path / "c")
