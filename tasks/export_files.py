"""Putting files into an export folder so that no reader ever sees half of one.

Image files are linked, copied or re-encoded upright (``materialize_image``), text
files are written under a temporary name and renamed, and whole export folders are
written into a temporary sibling and swapped in at the end (``swapped_in_folder``):
files of an earlier export that this one does not write, or an older layout,
disappear, and a crash never leaves a half export. Every format writes through these,
so a crash mid-export is handled the same way everywhere.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, JpegImagePlugin

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}


def image_destination(root: Path, relative_path: str) -> Path:
    """Where an image with ``relative_path`` goes under an export folder ``root``.

    Raises:
        ValueError: If the path is absolute or climbs out with '..', which would write
            outside the export folder.
    """
    path = PurePosixPath(relative_path)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"not a relative path inside the source: {relative_path!r}")
    return root.joinpath(*path.parts)


def local_source(source_uri: str, out: Path) -> Path:
    """The local file behind ``source_uri``: the file itself, or the copy of a remote
    image (S3, Roboflow) that labeling left in ``out``'s cache (fetched again if
    gone)."""
    from tasks.sources import local_file

    return local_file(source_uri, out)


def materialize_image(
    source_path: Path, destination: Path, *, orientation: int
) -> None:
    """Put one image file into an export folder, in the frame its boxes live in.

    The label table's boxes are in the upright frame (EXIF orientation applied), but
    consumers disagree on EXIF: some rotate, many training loaders read raw pixels. So
    an image with an orientation tag gets an upright copy without the tag (same format),
    which every consumer sees the same way. An image without one is hard-linked: no
    disk space, no re-encoding loss (editing the exported file in place edits the
    original too); across filesystems it is copied byte for byte.

    A rerun skips a destination that already matches (same byte size for links and
    copies, same upright pixel size for rotated copies). Files are written under a
    temporary name and renamed, so a crash never leaves a half file that looks done.

    Args:
        source_path: The original image file.
        destination: Where the export wants it; parent folders are created.
        orientation: The manifest's EXIF orientation tag of the file (1 = none).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    if orientation == 1:
        if _same_byte_size(source_path, destination):
            return
        _write_via_temporary(destination, lambda tmp: _link_or_copy(source_path, tmp))
    else:
        if _is_upright_copy(source_path, destination):
            return
        _write_via_temporary(destination, lambda tmp: _save_upright(source_path, tmp))


def write_text_atomically(path: Path, text: str | Iterable[str]) -> None:
    """Write a text file via a temporary name, so readers never see half of it.

    ``text`` may be pieces (a generator), written one by one: a file of every image
    of a run need not be held whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pieces = [text] if isinstance(text, str) else text

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as file:
            for piece in pieces:
                file.write(piece)

    _write_via_temporary(path, write)


@contextmanager
def swapped_in_folder(target: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; when the block ends without an
    error, it replaces ``target`` (whatever was there goes), otherwise it is removed.

    So an export never leaves a half-written folder behind, and files an earlier
    export (or an older layout) wrote there and this one does not are gone. The swap
    is two renames: a crash between them leaves no ``target`` but the finished one
    under its temporary name, never a mix. Leftovers of a crashed export (the
    ``.<name>-*.tmp`` / ``.old`` siblings) are removed first; the caller holds the
    output folder's lock, so no other export is writing them.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}-*"):
        _remove_path(stale)
    token = secrets.token_hex(4)
    fresh = target.with_name(f".{target.name}-{token}.tmp")
    fresh.mkdir()
    try:
        yield fresh
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}-{token}.old")
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(fresh, target)
    _remove_path(old)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _same_byte_size(source_path: Path, destination: Path) -> bool:
    return (
        destination.is_file()
        and destination.stat().st_size == source_path.stat().st_size
    )


def _is_upright_copy(source_path: Path, destination: Path) -> bool:
    if not destination.is_file():
        return False
    with Image.open(source_path) as source:
        width, height = source.size
        if source.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
            width, height = height, width
    with Image.open(destination) as copy:
        return (
            copy.size == (width, height)
            and copy.getexif().get(_EXIF_ORIENTATION, 1) == 1
        )


def _link_or_copy(source_path: Path, target: Path) -> None:
    try:
        os.link(source_path, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source_path, target)


def _save_upright(source_path: Path, target: Path) -> None:
    with Image.open(source_path) as source:
        upright = ImageOps.exif_transpose(source)
        # MPO (phone JPEGs with a second frame) is written as its first frame, a JPEG.
        image_format = "JPEG" if source.format == "MPO" else source.format
        options: dict[str, object] = {"exif": upright.getexif()}
        if "icc_profile" in source.info:
            options["icc_profile"] = source.info["icc_profile"]
        if image_format == "JPEG":
            # Reuse the original's quantisation so the copy keeps its quality instead
            # of Pillow's default of 75.
            options["qtables"] = source.quantization
            sampling = JpegImagePlugin.get_sampling(source)
            if sampling != -1:
                options["subsampling"] = sampling
        upright.save(target, format=image_format, **options)


def _write_via_temporary(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it to ``path``.

    The temporary name is short and fixed in length, whatever the length of
    ``path``'s name (a 250-byte name plus a prefix would pass NAME_MAX), and does not
    exist yet, so a hard link can be made to it.
    """
    tmp = path.with_name(f".autolabel-{secrets.token_hex(8)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
