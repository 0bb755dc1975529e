"""Finding images in a source and decoding them safely, with prefetch.

Ingest yields references (paths), never pixels; decoding happens inside the labeling
task, a few images ahead of the model on background threads. A file that cannot be
decoded becomes a skipped ImageRecord with a reason the user can act on; it never stops
the run.

A file is judged by its first bytes before it is read whole: one that no image format
recognises, or one over ``AUTOLABEL_MAX_IMAGE_BYTES`` (512 MiB by default), is skipped
without being read, so a 3 GB file named ``x.jpg`` costs a few bytes of I/O, not 3 GB
of memory. PIL's decompression-bomb pixel limit applies on top, before pixels are
allocated.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.labels import ImageRecord

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
MAX_IMAGE_BYTES_ENV = "AUTOLABEL_MAX_IMAGE_BYTES"
DEFAULT_MAX_IMAGE_BYTES = 512 * 1024**2
_HEAD_BYTES = 64  # enough for every signature below
_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Leading bytes of the formats we accept, to tell "corrupt PNG" from "not an image".
_SIGNATURES = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


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


def file_content_id(path: str | Path) -> str | None:
    """The image id a file would get (SHA-256 of its bytes); None if it cannot be read.

    Lets a caller know which images a chunk holds before decoding it (for example to
    check a credit budget), with the same definition of identity as ``decode_image``.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_image_bytes():
            return None  # skipped when decoded, never charged: not worth reading
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    except (OSError, ValueError):
        return None
    return digest.hexdigest()


def file_stamp(uri: str) -> str:
    """What tells a changed file from an unchanged one without reading it: size and
    modification time of a local file, ``"remote"`` for a URI (its bytes are not here
    to stat), ``"missing"`` if it cannot be stat'ed. Chunk keys and the preview key
    hash it, so both notice the same edits.
    """
    if "://" in uri:
        return "remote"
    try:
        info = Path(uri).stat()
    except OSError:
        return "missing"
    return f"{info.st_size}:{info.st_mtime_ns}"


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
    reason = _png_checksum_problem(data)
    if reason:
        return skipped(reason)
    try:
        image, orientation = _open_rgb(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return skipped(f"image too large to decode safely: {error}")
    except _TooLarge as error:
        return skipped(str(error))
    except UnidentifiedImageError:
        return skipped(_unidentified_reason(data))
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


def max_image_bytes() -> int:
    """The largest file read as an image: ``AUTOLABEL_MAX_IMAGE_BYTES``, else 512 MiB.

    A value that is not a positive whole number of bytes is ignored (the default
    applies): a typo must not make every image "too large".
    """
    value = os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip().replace("_", "")
    try:
        limit = int(value)
    except ValueError:
        return DEFAULT_MAX_IMAGE_BYTES
    return limit if limit > 0 else DEFAULT_MAX_IMAGE_BYTES


def file_problem(path: str | Path, size: int) -> str | None:
    """Why a regular file of ``size`` bytes is not worth reading whole, else None.

    Only its first bytes are read (and, for a format without a signature listed
    here, the header PIL parses when it opens a file lazily): an empty file, a file
    no image format recognises, or one over ``max_image_bytes()``.

    Raises:
        OSError: If the file cannot be opened or read.
    """
    if size == 0:
        return "empty file (0 bytes)"
    with Path(path).open("rb") as file:
        head = file.read(_HEAD_BYTES)
        if not head:
            return "empty file (0 bytes)"
        if _sniff_format(head) is None and not _pil_recognises(file):
            return "not an image (unrecognised format)"
    return size_problem(size)


def size_problem(size: int) -> str | None:
    """Why a file of ``size`` bytes is not read as an image (over the cap), if so."""
    limit = max_image_bytes()
    if size > limit:
        return (
            f"file too large: {size / 2**20:.1f} MiB ({size} bytes), over the limit "
            f"of {limit} bytes ({MAX_IMAGE_BYTES_ENV} raises it)"
        )
    return None


def _pil_recognises(file) -> bool:
    """Whether PIL identifies an open file's format from its header (lazy open)."""
    file.seek(0)
    try:
        with Image.open(file):
            return True
    except UnidentifiedImageError:
        return False
    except Exception:  # noqa: BLE001 - recognised but odd: decoding says what is wrong
        return True


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


def _png_checksum_problem(data: bytes) -> str | None:
    """A reason if a PNG chunk's CRC does not match its bytes (as libpng refuses it).

    PIL checks the CRCs of header chunks only: a flipped bit in image data would
    otherwise decode into wrong pixels without a word.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 8 + length
        if end + 4 > len(data):
            return None  # truncated: the decoder reports it
        (stored,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[position + 4 : end]) != stored:
            name = kind.decode("latin-1")
            return f"corrupt PNG: bad checksum (CRC) in its {name!r} chunk"
        if kind == b"IEND":
            return None
        position = end + 4
    return None


def _unidentified_reason(data: bytes) -> str:
    """Why PIL found no format: a known format's signature means a corrupt file."""
    fmt = _sniff_format(data)
    if fmt is None:
        return "not an image (unrecognised format)"
    return f"corrupt {fmt} file: its header cannot be read"


def _sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    return None


def decode_with_prefetch(
    refs: Iterable[ImageRef], *, workers: int = 4, lookahead: int = 16
) -> Iterator[DecodedImage | ImageRecord]:
    """Decode images on background threads, at most ``lookahead`` ahead of the consumer.

    PIL releases the GIL while decoding, so threads overlap decoding with inference; the
    bounded lookahead keeps memory flat however many images a chunk has.
    """
    refs = iter(refs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = [pool.submit(decode_image, ref) for ref in _take(refs, lookahead)]
        while pending:
            result = pending.pop(0).result()
            pending.extend(pool.submit(decode_image, ref) for ref in _take(refs, 1))
            yield result


def _take(iterator: Iterator[ImageRef], n: int) -> list[ImageRef]:
    taken = []
    for item in iterator:
        taken.append(item)
        if len(taken) == n:
            break
    return taken
