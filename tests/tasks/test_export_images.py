"""Image files in exports: upright copies, hard links, reruns, safe paths."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from tasks import export_files
from tasks.export_files import (
    image_destination,
    local_source,
    materialize_image,
    swapped_in_folder,
)
from tasks.export_images import images_to_export
from tasks.export_names import flat_export_names, write_export_names
from tests.tasks.export_folders import (
    EXIF_ORIENTATION,
    SOURCE_IMAGES,
    SourceImage,
    write_source_image,
)


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> tuple[SourceImage, Path]:
    image = SOURCE_IMAGES[3]
    path = tmp_path / "source" / image.relative_path
    write_source_image(image, path)
    return image, path


@pytest.fixture
def plain_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "plain.jpg"
    write_source_image(SOURCE_IMAGES[0], path)
    return path


def test_rotated_jpeg_gets_an_upright_copy_of_the_manifest_size(
    rotated_jpeg: tuple[SourceImage, Path], tmp_path: Path
) -> None:
    image, source = rotated_jpeg
    destination = tmp_path / "export" / "images" / "rotated.jpg"

    materialize_image(source, destination, orientation=6)

    with Image.open(source) as original, Image.open(destination) as copy:
        assert original.size == image.stored_wh == (40, 20)
        assert copy.size == image.upright_wh == (20, 40)
        assert copy.format == "JPEG"
        assert copy.getexif().get(EXIF_ORIENTATION) is None
        pixels = np.asarray(copy, dtype=float)
        expected = np.asarray(ImageOps.exif_transpose(original), dtype=float)
    # Orientation 6 shows the stored top-left corner at the top right.
    assert pixels[2:18, 12:].mean() > 240  # white (away from JPEG edge ringing)
    assert pixels[2:18, :8, 2].mean() < 80  # yellow: no blue
    assert np.abs(pixels - expected).mean() < 5  # JPEG re-encoding noise only
    assert os.stat(destination).st_ino != os.stat(source).st_ino


def test_unrotated_image_is_hard_linked(plain_jpeg: Path, tmp_path: Path) -> None:
    destination = tmp_path / "export" / "a" / "x.jpg"

    materialize_image(plain_jpeg, destination, orientation=1)

    assert os.stat(destination).st_ino == os.stat(plain_jpeg).st_ino


def test_link_falls_back_to_a_byte_copy_across_filesystems(
    plain_jpeg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device_link(source: Path, target: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(export_files.os, "link", cross_device_link)
    destination = tmp_path / "export" / "x.jpg"

    materialize_image(plain_jpeg, destination, orientation=1)

    assert destination.read_bytes() == plain_jpeg.read_bytes()
    assert os.stat(destination).st_ino != os.stat(plain_jpeg).st_ino


@pytest.mark.parametrize("orientation", [1, 6])
def test_rerun_leaves_a_finished_file_alone(
    orientation: int, rotated_jpeg: tuple[SourceImage, Path], tmp_path: Path
) -> None:
    _, source = rotated_jpeg
    destination = tmp_path / "export" / "x.jpg"
    materialize_image(source, destination, orientation=orientation)
    before = os.stat(destination)

    materialize_image(source, destination, orientation=orientation)

    after = os.stat(destination)
    # A fresh link or copy would change the inode or its ctime (link count).
    assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)
    assert [p.name for p in destination.parent.iterdir()] == ["x.jpg"]  # no temp


@pytest.mark.parametrize("orientation", [1, 6])
def test_stale_destination_of_another_size_is_replaced(
    orientation: int, rotated_jpeg: tuple[SourceImage, Path], tmp_path: Path
) -> None:
    _, source = rotated_jpeg
    destination = tmp_path / "export" / "x.jpg"
    destination.parent.mkdir(parents=True)
    Image.new("RGB", (7, 7)).save(destination)

    materialize_image(source, destination, orientation=orientation)

    with Image.open(destination) as copy:
        assert copy.size == ((40, 20) if orientation == 1 else (20, 40))


@pytest.mark.parametrize(
    ("relative_path", "expected"),
    [
        ("x.jpg", "x.jpg"),
        ("a/b/x.jpg", "a/b/x.jpg"),
        ("../x.jpg", ValueError),
        ("a/../../x.jpg", ValueError),
        ("/etc/x.jpg", ValueError),
        ("", ValueError),
    ],
)
def test_image_destination_stays_inside_the_export_folder(
    relative_path: str, expected: str | type[Exception], tmp_path: Path
) -> None:
    if isinstance(expected, str):
        assert image_destination(tmp_path, relative_path) == tmp_path / expected
    else:
        with pytest.raises(expected):
            image_destination(tmp_path, relative_path)


def test_remote_images_are_exported_from_the_labeling_cache(tmp_path: Path) -> None:
    from tasks.s3 import cache_path
    from tasks.sources import cache_dir

    assert local_source("/data/x.jpg", tmp_path) == Path("/data/x.jpg")
    cached = cache_path("s3://bucket/x.jpg", cache_dir(tmp_path))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"jpeg")
    assert local_source("s3://bucket/x.jpg", tmp_path) == cached


@pytest.mark.parametrize(
    ("relative_paths", "expected"),
    [
        (["a/x.jpg", "b/x.jpg"], ["a__x.jpg", "b__x.jpg"]),
        (["a/b/c,d.png"], ["a__b__c_d.png"]),
        # One stem once flat: the second gets the hash of its relative path
        # (sha256("a__x.png") starts 3939497c).
        (["a/x.jpg", "a__x.png"], ["a__x.jpg", "a__x-3939497c.png"]),
        (["X.jpg", "x.png"], ["X.jpg", "x-3910c650.png"]),  # case-insensitive
    ],
)
def test_flat_export_names(relative_paths: list[str], expected: list[str]) -> None:
    assert flat_export_names(relative_paths) == expected


def test_export_names_table_is_written_once_per_image(tmp_path: Path) -> None:
    from tasks.labels import OutputLayout, read_images, read_labels
    from tasks.splits import Splits
    from tests.tasks.export_folders import CLASS_NAMES, write_output_folder

    layout = write_output_folder(tmp_path)
    images = images_to_export(
        read_images(layout), read_labels(layout), class_names=CLASS_NAMES, flatten=True
    )
    splits = Splits(train=0.5, val=0.5)

    path = write_export_names(layout, images, splits)

    assert path == OutputLayout(layout.root).export_names
    table = pd.read_parquet(path)
    assert table.to_dict("records") == [
        {
            "image_id": image.image_id,
            "relative_path": image.relative_path,
            "source_uri": image.source_uri,
            "split": splits.split_of(image.image_id),
            "export_name": image.export_path,
        }
        for image in images
    ]
    assert len(table) == len(SOURCE_IMAGES) == 4
    assert table["image_id"].str.len().min() == 16  # content hashes, never empty


def test_swapped_in_folder_replaces_the_folder_only_when_done(tmp_path: Path) -> None:
    target = tmp_path / "yolo"
    (target / "old").mkdir(parents=True)
    (target / "old" / "stale.txt").write_text("stale")
    leftover = tmp_path / ".yolo-deadbeef.tmp"  # from a crashed export
    leftover.mkdir()

    with (
        pytest.raises(RuntimeError, match="crash"),
        swapped_in_folder(target) as fresh,
    ):
        assert not leftover.exists()
        (fresh / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["yolo"]
    assert (target / "old" / "stale.txt").read_text() == "stale"

    with swapped_in_folder(target) as fresh:
        assert fresh.parent == tmp_path and fresh.name.startswith(".yolo-")
        (fresh / "new.txt").write_text("new")

    assert [p.name for p in tmp_path.iterdir()] == ["yolo"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
