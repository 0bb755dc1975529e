"""Judging an image file by its bytes on disk, before (or instead of) decoding it.

Decoding reads a file whole, so whether it is worth reading is decided first from its
first bytes: one that no image format recognises, or one over
``AUTOLABEL_MAX_IMAGE_BYTES`` (512 MiB by default), is skipped without being read, so
a 3 GB file named ``x.jpg`` costs a few bytes of I/O, not 3 GB of memory. The same
cap keeps a remote source from downloading such a file at all, and the same content
hash and stamp tell a caller which images a chunk holds, and whether they changed,
without decoding any of them. Kept apart from decoding so that listing, S3 and credit
checks can ask these questions without pulling in the pixel pipeline.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES_ENV = "AUTOLABEL_MAX_IMAGE_BYTES"
DEFAULT_MAX_IMAGE_BYTES = 512 * 1024**2
_HEAD_BYTES = 64  # enough for every signature below
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


def file_content_id(path: str | Path) -> str | None:
    """The image id a file would get (SHA-256 of its bytes); None if it cannot be read.

    Lets a caller know which images a chunk holds before decoding it (for example to
    check a credit budget), with the same definition of identity as
    ``tasks.images.decode_image``.
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


def png_checksum_problem(data: bytes) -> str | None:
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


def unidentified_reason(data: bytes) -> str:
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
