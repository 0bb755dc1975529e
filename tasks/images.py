"""Finding images in a source and decoding them safely, with prefetch.

Ingest yields references (paths), never pixels; decoding happens inside the labeling
task, a few images ahead of the model on background threads. A file that cannot be
decoded becomes a skipped ImageRecord with a reason the user can act on; it never stops
the run.

A file is judged by its first bytes before it is read whole (``tasks.image_files``:
unrecognised format, over the size cap); PIL's decompression-bomb pixel limit applies
on top, before pixels are allocated.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.image_files import file_problem, png_checksum_problem, unidentified_reason
from tasks.labels import ImageRecord

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives: its URI and its path relative to the source root.

    ``problem`` is set when the file is known to be unusable before it is opened (a name
    that is not valid UTF-8 cannot be stored in the label table); ``uri`` and
    ``relative_path`` are then printable stand-ins, not paths to open.
    """

    uri: str
    relative_path: str
    problem: str | None = None
    local_path: str | None = None  # the bytes on this machine, when ``uri`` is remote

    @property
    def readable_path(self) -> Path:
        """Where to read the bytes: the local copy of a remote image, or the file."""
        return Path(self.local_path or self.uri)


@dataclass
class DecodedImage:
    """A readable image: its record for the label table and its RGB pixels."""

    record: ImageRecord
    image: Image.Image


# An image decoded ahead of its chunk (``tasks.decode_ahead``): the ref as localized
# then (a download may have failed), and the decoded image or the skipped record.
DecodedAhead = tuple[ImageRef, DecodedImage | ImageRecord]


class SourceError(ValueError):
    """A source that cannot be read at all (missing folder, not a folder)."""


def discover_images(source: str | Path) -> list[ImageRef]:
    """Every file with an image suffix under ``source``, recursively, in a stable order.

    Paths are only listed here; whether a file really is an image is found out when it
    is decoded, so a broken file is reported with its reason instead of silently
    vanishing.
    """
    root = Path(source).expanduser()
    if not root.exists():
        raise SourceError(f"source {source}: no such folder")
    if not root.is_dir():
        raise SourceError(f"source {source}: not a folder")
    root = root.resolve()
    refs = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        # A directory named like an image (x.jpg/) is listed too, so it gets reported.
        for name in sorted([*filenames, *dirnames]):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = Path(dirpath) / name
                refs.append(_ref(path, path.relative_to(root).as_posix()))
    return sorted(refs, key=lambda ref: ref.relative_path)


def _ref(path: Path, relative_path: str) -> ImageRef:
    """A reference; one with a printable stand-in name if the name is not UTF-8.

    On POSIX, undecodable bytes in a file name come back as lone surrogates, which no
    UTF-8 writer (Parquet, JSON, the chunk key) accepts: such a file is reported, not
    read, and the user renames it.
    """
    uri = str(path)
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return ImageRef(
            _printable(uri),
            _printable(relative_path),
            problem="file name is not valid UTF-8: rename the file",
        )
    return ImageRef(uri, relative_path)


def _printable(name: str) -> str:
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def decode_image(ref: ImageRef) -> DecodedImage | ImageRecord:
    """Read and decode one image; a skipped ImageRecord with a reason if it is unusable.

    Returns RGB pixels with the EXIF orientation applied, and the content hash as image
    id (identical files get identical ids, wherever they live). Never raises for a bad
    file: one odd file must not stop a chunk of good ones.
    """

    def skipped(reason: str) -> ImageRecord:
        return ImageRecord(ref.uri, ref.relative_path, skipped_reason=reason)

    if ref.problem:
        return skipped(ref.problem)
    path = ref.readable_path
    if path.is_symlink() and not path.exists():
        return skipped("broken symbolic link")
    try:
        info = path.stat()
    except OSError as error:
        return skipped(f"cannot read file: {error.strerror or error}")
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return skipped("a folder, not an image file")
    if not stat.S_ISREG(mode):
        # A FIFO or device would block or never end when read.
        return skipped("not a regular file (pipe, socket or device)")
    try:
        problem = file_problem(path, info.st_size)
        if problem:
            return skipped(problem)
        data = path.read_bytes()
    except OSError as error:
        return skipped(f"cannot read file: {error.strerror or error}")
    if not data:
        return skipped("empty file (0 bytes)")
    reason = png_checksum_problem(data)
    if reason:
        return skipped(reason)
    try:
        image, orientation = _open_rgb(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return skipped(f"image too large to decode safely: {error}")
    except _TooLarge as error:
        return skipped(str(error))
    except UnidentifiedImageError:
        return skipped(unidentified_reason(data))
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return skipped(f"corrupt or truncated image: {error}")
    except Exception as error:  # noqa: BLE001 - a decoder bug must not stop the run
        return skipped(f"cannot decode image: {type(error).__name__}: {error}")
    record = ImageRecord(
        source_uri=ref.uri,
        relative_path=ref.relative_path,
        image_id=hashlib.sha256(data).hexdigest(),
        width=image.width,
        height=image.height,
        orientation=orientation,
    )
    return DecodedImage(record, image)


class _TooLarge(ValueError):
    """An image whose declared size is over the pixel limit (found before decoding)."""


def _open_rgb(data: bytes) -> tuple[Image.Image, int]:
    with Image.open(io.BytesIO(data)) as opened:
        # The header is parsed, no pixels yet: refuse a huge declared size here, before
        # load() allocates it. PIL warns (or raises) from open() by itself too, but a
        # warnings filter is process-wide state that decoding threads cannot share.
        limit = Image.MAX_IMAGE_PIXELS
        width, height = opened.size
        if limit and width * height > limit:
            raise _TooLarge(
                f"image too large to decode safely: {width}x{height} pixels declared, "
                f"limit {limit} (possible decompression bomb)"
            )
        opened.load()
        orientation = _orientation(opened)
        upright = ImageOps.exif_transpose(opened) if orientation != 1 else opened
        if upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            upright.mode == "P" and "transparency" in upright.info
        ):
            rgba = upright.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, rgba).convert("RGB")
        elif upright.mode.startswith("I") or upright.mode == "F":
            rgb = _high_depth_to_rgb(upright)
        else:
            rgb = upright.convert("RGB")
    return rgb, orientation


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag; 1 (none) if missing or not one of the 8 valid ones."""
    value = image.getexif().get(_EXIF_ORIENTATION, 1)
    if isinstance(value, tuple | list):
        value = value[0] if value else 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit or float grayscale scaled to 8 bits (PIL's convert would clip at 255).

    Integer images keep their scale when they fit in 8 bits and are scaled by their peak
    otherwise (16-bit sensors rarely use the full range); float images are stretched
    from their minimum to their maximum.
    """
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        span = (high - low) or 1.0
        scaled = (np.nan_to_num(array, nan=low) - low) * (255.0 / span)
    else:
        peak = float(array.max()) if array.size else 0.0
        scaled = array * (255.0 / max(peak, 255.0))
    return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), mode="L").convert(
        "RGB"
    )


def decode_with_prefetch(
    refs: Iterable[ImageRef],
    *,
    workers: int = 4,
    lookahead: int = 16,
    decoded_ahead: Mapping[str, Future[DecodedAhead]] | None = None,
) -> Iterator[DecodedImage | ImageRecord]:
    """Decode images on background threads, at most ``lookahead`` ahead of the consumer.

    PIL releases the GIL while decoding, so threads overlap decoding with inference; the
    bounded lookahead keeps memory flat however many images a chunk has.
    ``decoded_ahead`` (by URI) holds images whose decoding began before this call (the
    head of the next chunk, ``tasks.decode_ahead``): they are taken instead of decoded
    again, when their local copy is the one given here.
    """
    refs = iter(refs)
    ahead = dict(decoded_ahead or {})
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def submit(ref: ImageRef) -> Callable[[], DecodedImage | ImageRecord]:
            early = ahead.pop(ref.uri, None)
            if early is not None:
                return functools.partial(_from_ahead, ref, early)
            return pool.submit(decode_image, ref).result

        pending = deque(submit(ref) for ref in _take(refs, lookahead))
        while pending:
            result = pending.popleft()()
            pending.extend(submit(ref) for ref in _take(refs, 1))
            yield result


def _from_ahead(
    ref: ImageRef, future: Future[DecodedAhead]
) -> DecodedImage | ImageRecord:
    """An image decoded ahead, or decoded now if that was of another local copy."""
    try:
        local, result = future.result()
    except Exception:  # noqa: BLE001 - the decoding ahead was stopped: decode it here
        return decode_image(ref)
    return result if local == ref else decode_image(ref)


def _take(iterator: Iterator[ImageRef], n: int) -> list[ImageRef]:
    taken = []
    for item in iterator:
        taken.append(item)
        if len(taken) == n:
            break
    return taken
