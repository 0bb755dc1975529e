"""What every export format shares: which images go out, in what order, their files.

COCO and YOLO differ only in how they write boxes. Which images are exported (not the
skipped ones), their order (by relative path, so two exports of the same table are
byte-identical), which labels belong to each, what each file is called in the export,
and how an image file lands in the export folder are decided here once, so the formats
cannot drift apart.

Export names: an image keeps its relative path, unless that would clash within the
export or its file name is long. Two images clash when their names would be one file
(compared case-insensitively, as on macOS and Windows), or, where a format pairs files
by stem (YOLO's ``x.jpg`` + ``x.txt``), one stem. The first in relative-path order
keeps its name; each other one, and any file name over ``MAX_EXPORT_NAME_BYTES``, gets
``<stem, cut to fit>-<8 hex of the SHA-256 of its relative path><suffix>``. The label
table and the manifest keep the original relative path. Temporary files use short
names of their own, so a 250-byte file name still has room for them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import pandas as pd
from PIL import Image, ImageOps, JpegImagePlugin

_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}
_LABEL_ORDER = ["confidence", "class_id", "x_min", "y_min", "x_max", "y_max"]
MAX_EXPORT_NAME_BYTES = 200  # NAME_MAX is 255: room for a suffix tools add
_MAX_SUFFIX_BYTES = 16
ClashBy = Literal["name", "stem"]


@dataclass(frozen=True)
class ExportImage:
    """One image to export with its labels (rows of the label table, maybe none).

    ``export_path`` is its path inside the export (see the module docstring): the
    relative path unless that clashes or is too long.
    """

    relative_path: str
    source_uri: str
    width: int
    height: int
    orientation: int
    labels: pd.DataFrame
    export_path: str = ""

    def __post_init__(self) -> None:
        if not self.export_path:
            object.__setattr__(self, "export_path", self.relative_path)


def images_to_export(
    images: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    class_names: list[str],
    clash_by: ClashBy = "name",
) -> list[ExportImage]:
    """The manifest's readable images, sorted by relative path, each with its labels.

    Each gets an ``export_path`` unique within the export (``clash_by="stem"`` for a
    format that pairs files by stem) and at most ``MAX_EXPORT_NAME_BYTES`` long.

    Labels are matched on (image_id, source_uri): the content hash alone would give two
    identical files in different folders each other's boxes. Within an image, labels are
    listed by confidence (highest first) and then by class and box, so the order never
    depends on how images were chunked.

    Raises:
        ValueError: If labels name an image missing from the manifest, a class id
            outside ``class_names`` or a class name that disagrees with it, or if two
            readable images share a relative path: each would export something wrong
            without a word.
    """
    _check_classes(labels, class_names)
    readable = images[images["skipped_reason"].isna()].sort_values(
        "relative_path", kind="stable"
    )
    duplicated = readable["relative_path"][readable["relative_path"].duplicated()]
    if not duplicated.empty:
        raise ValueError(f"images share a relative path: {sorted(set(duplicated))[:5]}")
    key = ["image_id", "source_uri"]
    known = set(zip(images["image_id"], images["source_uri"], strict=True))
    unknown = {
        k
        for k in zip(labels["image_id"], labels["source_uri"], strict=True)
        if k not in known
    }
    if unknown:
        raise ValueError(
            f"labels refer to images missing from the manifest: {sorted(unknown)[:5]}"
        )
    ordered = labels.sort_values(
        _LABEL_ORDER, ascending=[False] + [True] * 5, kind="stable"
    )
    groups = {k: group for k, group in ordered.groupby(key, sort=False)}
    no_labels = labels.iloc[0:0]
    rows = list(readable.itertuples(index=False))
    export_paths = unique_export_names(
        [row.relative_path for row in rows], clash_by=clash_by
    )
    return [
        ExportImage(
            relative_path=row.relative_path,
            source_uri=row.source_uri,
            width=int(row.width),
            height=int(row.height),
            orientation=int(row.orientation),
            labels=groups.get((row.image_id, row.source_uri), no_labels),
            export_path=export_path,
        )
        for row, export_path in zip(rows, export_paths, strict=True)
    ]


def unique_export_names(
    paths: Sequence[str],
    *,
    clash_by: ClashBy = "name",
    ids: Sequence[str] | None = None,
) -> list[str]:
    """``paths`` (POSIX, relative) made unique and short enough for an export.

    A path keeps its name when it is at most ``MAX_EXPORT_NAME_BYTES`` bytes and no
    earlier path (in the given order) has taken its name, or its stem with
    ``clash_by="stem"``, compared case-insensitively. Every other one gets a name cut
    to fit plus ``-`` and the first hex digits of the SHA-256 of its id (by default
    the path itself), longer ones where even those clash. Folders are kept.

    Args:
        paths: The paths, in the order that decides who keeps a contested name.
        clash_by: ``name`` (one file per name) or ``stem`` (one per stem, for formats
            pairing ``x.jpg`` with ``x.txt``).
        ids: What each path's hash is made of; distinct ids give distinct names
            (pass the relative paths when ``paths`` are derived, e.g. flattened).
    """
    ids = list(paths) if ids is None else list(ids)
    if len(ids) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(ids)} ids")

    def key(path: str) -> str:
        pure = PurePosixPath(path)
        leaf = pure.stem if clash_by == "stem" else pure.name
        return f"{pure.parent.as_posix()}/{leaf}".casefold()

    taken: set[str] = set()
    names: list[str | None] = [None] * len(paths)
    for index, path in enumerate(paths):
        name_bytes = len(PurePosixPath(path).name.encode("utf-8"))
        if name_bytes <= MAX_EXPORT_NAME_BYTES and key(path) not in taken:
            taken.add(key(path))
            names[index] = path
    for index, path in enumerate(paths):
        if names[index] is not None:
            continue
        digest = hashlib.sha256(ids[index].encode("utf-8")).hexdigest()
        for length in (8, 16, 32, 64):
            candidate = _with_hash(path, digest[:length])
            if key(candidate) not in taken:
                break
        else:  # 256 bits equal: the same id twice
            raise ValueError(f"two exported images have the same id {ids[index]!r}")
        taken.add(key(candidate))
        names[index] = candidate
    return [name for name in names if name is not None]


def _with_hash(path: str, digest: str) -> str:
    """``path`` with ``-<digest>`` before its suffix, the stem cut to fit the limit."""
    pure = PurePosixPath(path)
    suffix = pure.suffix
    if len(suffix.encode("utf-8")) > _MAX_SUFFIX_BYTES:
        suffix = ""
    stem = pure.name[: len(pure.name) - len(suffix)] if suffix else pure.name
    budget = MAX_EXPORT_NAME_BYTES - len(suffix.encode("utf-8")) - len(digest) - 1
    stem = stem.encode("utf-8")[: max(budget, 0)].decode("utf-8", errors="ignore")
    return pure.with_name(f"{stem}-{digest}{suffix}").as_posix()


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


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file via a temporary name, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_via_temporary(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _check_classes(labels: pd.DataFrame, class_names: list[str]) -> None:
    class_ids = labels["class_id"].astype(int)
    out_of_range = labels[(class_ids < 0) | (class_ids >= len(class_names))]
    if not out_of_range.empty:
        raise ValueError(
            f"class ids {sorted(set(out_of_range['class_id']))} are outside "
            f"the {len(class_names)} class names {class_names}"
        )
    expected = [class_names[i] for i in class_ids]
    mismatched = labels[labels["class_name"].to_numpy(dtype=object) != expected]
    if not mismatched.empty:
        pairs = sorted(
            set(zip(mismatched["class_id"], mismatched["class_name"], strict=True))
        )
        raise ValueError(
            f"labels' (class_id, class_name) {pairs[:5]} disagree with {class_names}"
        )


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
