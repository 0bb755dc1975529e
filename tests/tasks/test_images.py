"""Bad input, nothing lost: a corpus of awkward files, each skipped with a reason or
decoded to upright RGB pixels of the right size.

The corpus is built here from PIL and raw bytes (no fixtures on disk), so every case
says exactly what is odd about its file.
"""

from __future__ import annotations

import io
import os
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tasks.image_files import file_content_id
from tasks.images import (
    DecodedImage,
    ImageRef,
    SourceError,
    decode_image,
    decode_with_prefetch,
    discover_images,
)
from tasks.labels import (
    IMAGE_SCHEMA,
    ImageRecord,
    OutputLayout,
    images_to_frame,
    read_images,
    write_parquet_atomically,
)

EXIF_ORIENTATION = 0x0112
RED, BLUE, WHITE = (220, 20, 20), (20, 20, 220), (255, 255, 255)


def two_colour(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = RED
    array[:, width // 2 :] = BLUE
    return Image.fromarray(array)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes claiming width x height RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose logical screen and frame claim width x height pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00\x3b"


def with_bad_crc(png: bytes, kind: bytes) -> bytes:
    """``png`` with one bit of the CRC of its first ``kind`` chunk flipped."""
    position = 8
    while True:
        (length,) = struct.unpack(">I", png[position : position + 4])
        if png[position + 4 : position + 8] == kind:
            crc_at = position + 8 + length
            return png[:crc_at] + bytes([png[crc_at] ^ 0x01]) + png[crc_at + 1 :]
        position += 12 + length


def jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encoded(two_colour(), "JPEG", quality=95, exif=exif)


def sixteen_bit_png() -> bytes:
    gradient = np.linspace(0, 65535, 40 * 20).reshape(20, 40).astype(np.uint16)
    return encoded(Image.fromarray(gradient), "PNG")


def palette_png_with_transparency() -> bytes:
    palette = two_colour().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    array = np.asarray(palette).copy()
    red_index = int(array[0, 0])
    return encoded(palette, "PNG", transparency=red_index)  # red becomes transparent


def animated_gif() -> bytes:
    first, second = two_colour(), two_colour().transpose(Image.Transpose.ROTATE_180)
    return encoded(first, "GIF", save_all=True, append_images=[second], duration=50)


def truncated_jpeg() -> bytes:
    data = encoded(Image.effect_noise((64, 48), 64).convert("RGB"), "JPEG")
    return data[: len(data) // 2]


def ihdr_crc_png() -> bytes:
    return with_bad_crc(encoded(two_colour(), "PNG"), b"IHDR")


def idat_crc_png() -> bytes:
    return with_bad_crc(encoded(two_colour(), "PNG"), b"IDAT")


@dataclass(frozen=True)
class Readable:
    """A file that must decode: its upright size, EXIF tag and colour at two points."""

    name: str
    make: Callable[[], bytes]
    size: tuple[int, int] = (40, 20)
    orientation: int = 1
    # (x, y) -> expected RGB, compared with a tolerance for lossy formats.
    colours: tuple[tuple[tuple[int, int], tuple[int, int, int]], ...] = (
        ((5, 10), RED),
        ((35, 10), BLUE),
    )


@dataclass(frozen=True)
class Unreadable:
    """A file that must be skipped, and a phrase its reason must contain."""

    name: str
    make: Callable[[], bytes]
    reason: str


READABLE = [
    Readable("plain.jpg", lambda: encoded(two_colour(), "JPEG", quality=95)),
    Readable("cmyk.jpg", lambda: encoded(two_colour().convert("CMYK"), "JPEG")),
    # Orientation 6: stored landscape, shown rotated 90 degrees clockwise (red on top).
    Readable(
        "rotated.jpg",
        lambda: jpeg_with_orientation(6),
        size=(20, 40),
        orientation=6,
        colours=(((10, 5), RED), ((10, 35), BLUE)),
    ),
    # Orientation 8: rotated 90 degrees counter-clockwise (blue on top).
    Readable(
        "rotated-ccw.jpg",
        lambda: jpeg_with_orientation(8),
        size=(20, 40),
        orientation=8,
        colours=(((10, 5), BLUE), ((10, 35), RED)),
    ),
    # An out-of-range tag means "no rotation", and says so in the record.
    Readable("orientation-9.jpg", lambda: jpeg_with_orientation(9)),
    Readable(
        "gray16.png",
        sixteen_bit_png,
        colours=(((0, 0), (0, 0, 0)), ((39, 19), (255, 255, 255))),
    ),
    Readable(
        "palette-transparent.png",
        palette_png_with_transparency,
        colours=(((5, 10), WHITE), ((35, 10), BLUE)),
    ),
    Readable("animated.gif", animated_gif),  # first frame
    Readable("lossless.webp", lambda: encoded(two_colour(), "WEBP", lossless=True)),
    Readable("plain.tiff", lambda: encoded(two_colour(), "TIFF")),
    Readable("rgba.png", lambda: encoded(two_colour().convert("RGBA"), "PNG")),
    Readable("ünïcödé näme.jpg", lambda: encoded(two_colour(), "JPEG", quality=95)),
    Readable("sub dir/with space.png", lambda: encoded(two_colour(), "PNG")),
    Readable("png-named.jpg", lambda: encoded(two_colour(), "PNG")),
]

UNREADABLE = [
    Unreadable("zero-bytes.jpg", lambda: b"", "empty file"),
    Unreadable("text.jpg", lambda: b"just some text\n", "not an image"),
    Unreadable("truncated.jpg", truncated_jpeg, "truncated"),
    Unreadable("bad-crc-header.png", ihdr_crc_png, "bad checksum (CRC) in its 'IHDR'"),
    Unreadable("bad-crc-data.png", idat_crc_png, "bad checksum (CRC) in its 'IDAT'"),
    Unreadable("truncated-header.png", lambda: b"\x89PNG\r\n\x1a\n\0\0", "corrupt PNG"),
    Unreadable("bomb.png", lambda: png_declaring(100_000, 100_000), "too large"),
    # Over PIL's warning limit but under its error limit: refused by our own check.
    Unreadable(
        "bomb-warning-zone.png", lambda: png_declaring(12_000, 12_000), "too large"
    ),
    Unreadable("bomb.gif", lambda: gif_declaring(65_535, 65_535), "too large"),
]


def write_corpus(root: Path) -> None:
    """Every READABLE and UNREADABLE file plus the odd non-files under ``root``."""
    for case in [*READABLE, *UNREADABLE]:
        path = root / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.make())
    (root / "broken-link.jpg").symlink_to(root / "gone.jpg")
    (root / "folder.jpg").mkdir()
    os.mkfifo(root / "pipe.png")
    (root / "notes.txt").write_text("not an image suffix: never listed")


ODD_FILES = {
    "broken-link.jpg": "broken symbolic link",
    "folder.jpg": "a folder",
    "pipe.png": "not a regular file",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def decoded(corpus: Path) -> dict[str, DecodedImage | ImageRecord]:
    """Every listed entry of the corpus, decoded once for the module's tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return {ref.relative_path: decode_image(ref) for ref in discover_images(corpus)}


def test_discover_lists_every_image_named_entry_in_a_stable_order(corpus: Path):
    listed = [ref.relative_path for ref in discover_images(corpus)]

    expected = sorted([c.name for c in READABLE + UNREADABLE] + list(ODD_FILES))
    assert listed == expected
    assert all(Path(ref.uri).is_absolute() for ref in discover_images(corpus))


@pytest.mark.parametrize("case", READABLE, ids=lambda case: case.name)
def test_readable_file_decodes_to_upright_rgb(
    corpus: Path, decoded: dict, case: Readable
):
    result = decoded[case.name]

    assert isinstance(result, DecodedImage), getattr(result, "skipped_reason", None)
    assert result.image.mode == "RGB"
    assert result.image.size == case.size
    assert (result.record.width, result.record.height) == case.size
    assert result.record.orientation == case.orientation
    assert result.record.skipped_reason is None
    assert result.record.relative_path == case.name
    expected_id = file_content_id(corpus / case.name)
    assert result.record.image_id == expected_id and len(expected_id) == 64
    pixels = np.asarray(result.image, dtype=int)
    for (x, y), colour in case.colours:
        assert np.abs(pixels[y, x] - colour).max() <= 40, (x, y, pixels[y, x])


@pytest.mark.parametrize("case", UNREADABLE, ids=lambda case: case.name)
def test_unreadable_file_is_skipped_with_its_reason(decoded: dict, case: Unreadable):
    result = decoded[case.name]

    assert isinstance(result, ImageRecord)
    assert case.reason in result.skipped_reason
    assert result.relative_path == case.name
    assert (result.image_id, result.width, result.height) == ("", 0, 0)


@pytest.mark.parametrize(("name", "reason"), ODD_FILES.items())
def test_entries_that_are_not_files_are_skipped_with_their_reason(
    decoded: dict, name: str, reason: str
):
    result = decoded[name]

    assert isinstance(result, ImageRecord)
    assert reason in result.skipped_reason


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (png_declaring(12_000, 12_000), "12000x12000"),  # PIL would only warn
        (png_declaring(100_000, 100_000), "10000000000"),  # PIL refuses by itself
        (gif_declaring(65_535, 65_535), "pixels"),
    ],
    ids=["png-over-warning-limit", "png-over-error-limit", "gif"],
)
def test_decompression_bomb_is_refused_before_any_pixel_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, declared: str
):
    def no_decoding(self):
        raise AssertionError("the bomb's pixels were being decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        result = decode_image(ImageRef(str(path), "bomb.png"))

    assert time.perf_counter() - started < 1.0
    assert isinstance(result, ImageRecord)
    assert "too large to decode safely" in result.skipped_reason
    assert declared in result.skipped_reason


def test_a_bomb_is_refused_even_when_warnings_are_errors(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(12_000, 12_000))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = decode_image(ImageRef(str(path), "bomb.png"))

    assert "too large to decode safely" in result.skipped_reason


def test_file_name_that_is_not_utf8_is_reported_with_a_printable_name(tmp_path: Path):
    root = tmp_path / "latin1"
    root.mkdir()
    raw_name = os.path.join(os.fsencode(root), b"caf\xe9.jpg")
    try:
        with open(raw_name, "wb") as file:
            file.write(encoded(two_colour(), "JPEG"))
    except OSError:
        pytest.skip("this filesystem refuses names that are not UTF-8")

    (ref,) = discover_images(root)
    result = decode_image(ref)

    assert ref.relative_path == "caf\\xe9.jpg"
    assert isinstance(result, ImageRecord)
    assert "not valid UTF-8" in result.skipped_reason
    ref.uri.encode("utf-8")  # storable in Parquet, hashable into a chunk key


def test_the_whole_corpus_is_accounted_for_and_stored(corpus: Path, tmp_path: Path):
    refs = discover_images(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = list(decode_with_prefetch(refs, workers=4, lookahead=4))
    records = [r.record if isinstance(r, DecodedImage) else r for r in results]
    layout = OutputLayout(tmp_path / "out")
    write_parquet_atomically(
        images_to_frame(records, run_id="run"),
        layout.shard_paths("corpus")[1],
        IMAGE_SCHEMA,
    )

    manifest = read_images(layout).set_index("relative_path")
    assert list(manifest.index) == [ref.relative_path for ref in refs]
    readable = manifest[manifest["skipped_reason"].isna()]
    assert sorted(readable.index) == sorted(case.name for case in READABLE)
    skipped = manifest["skipped_reason"].dropna()
    assert sorted(skipped.index) == sorted(
        [case.name for case in UNREADABLE] + list(ODD_FILES)
    )
    assert (skipped.str.len() > 0).all()


def test_file_content_id_is_none_for_what_cannot_be_read(corpus: Path):
    assert file_content_id(corpus / "folder.jpg") is None
    assert file_content_id(corpus / "broken-link.jpg") is None
    assert file_content_id(corpus / "pipe.png") is None
    assert file_content_id(corpus / "zero-bytes.jpg") is not None


def a_file(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda tmp: tmp / "missing", "no such folder"),
        (lambda tmp: a_file(tmp / "file.jpg"), "not a folder"),
    ],
    ids=["missing", "a-file"],
)
def test_source_that_is_not_a_folder_is_refused(
    tmp_path: Path, make_source, message: str
):
    with pytest.raises(SourceError, match=message):
        discover_images(make_source(tmp_path))
