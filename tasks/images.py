"""Finding images in a source and decoding them safely, with prefetch.

Ingest yields references (paths), never pixels; decoding happens inside the labeling task, a few
images ahead of the model on background threads. A file that cannot be decoded becomes a
skipped ImageRecord with a reason the user can act on; it never stops the run.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
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
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives: its URI and its path relative to the source root."""

    uri: str
    relative_path: str


@dataclass
class DecodedImage:
    """A readable image: its record for the label table and its RGB pixels."""

    record: ImageRecord
    image: Image.Image


class SourceError(ValueError):
    """A source that cannot be read at all (missing folder, not a folder)."""


def discover_images(source: str | Path) -> list[ImageRef]:
    """Every file with an image suffix under ``source``, recursively, in a stable order.

    Paths are only listed here; whether a file really is an image is found out when it is
    decoded, so a broken file is reported with its reason instead of silently vanishing.
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
                refs.append(ImageRef(str(path), path.relative_to(root).as_posix()))
    return sorted(refs, key=lambda ref: ref.relative_path)


def decode_image(ref: ImageRef) -> DecodedImage | ImageRecord:
    """Read and decode one image; a skipped ImageRecord with a reason if it cannot be used.

    Returns RGB pixels with the EXIF orientation applied, and the content hash as image id
    (identical files get identical ids, wherever they live).
    """
    path = Path(ref.uri)

    def skipped(reason: str) -> ImageRecord:
        return ImageRecord(ref.uri, ref.relative_path, skipped_reason=reason)

    if path.is_symlink() and not path.exists():
        return skipped("broken symbolic link")
    if path.is_dir():
        return skipped("a folder, not an image file")
    try:
        data = path.read_bytes()
    except OSError as error:
        return skipped(f"cannot read file: {error.strerror or error}")
    if not data:
        return skipped("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image, orientation = _open_rgb(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return skipped(f"image too large to decode safely: {error}")
    except UnidentifiedImageError:
        return skipped("not an image (unrecognised format)")
    except (OSError, SyntaxError, ValueError) as error:
        return skipped(f"corrupt or truncated image: {error}")
    record = ImageRecord(
        source_uri=ref.uri,
        relative_path=ref.relative_path,
        image_id=hashlib.sha256(data).hexdigest(),
        width=image.width,
        height=image.height,
        orientation=orientation,
    )
    return DecodedImage(record, image)


def _open_rgb(data: bytes) -> tuple[Image.Image, int]:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        orientation = int(opened.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        upright = ImageOps.exif_transpose(opened)
        if upright.mode in ("RGBA", "LA", "PA") or (
            upright.mode == "P" and "transparency" in upright.info
        ):
            rgba = upright.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, rgba).convert("RGB")
        elif upright.mode == "I;16" or upright.mode.startswith("I"):
            rgb = _sixteen_bit_to_rgb(upright)
        else:
            rgb = upright.convert("RGB")
    return rgb, orientation


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (PIL's convert would clip everything above 255)."""
    array = np.asarray(image, dtype=np.float64)
    peak = array.max() or 1.0
    scaled = (array * (255.0 / max(peak, 255.0))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


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
