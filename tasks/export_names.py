"""What each exported image is called: the naming rule and ``export_names.parquet``.

Every export format names its files by these rules, decided once here so that an image
has one name whichever format wrote it, and so that formats cannot drift apart.

Export names: an image keeps its relative path, unless that would clash within the
export or its file name is long. Two images clash when their names would be one file
(compared case-insensitively, as on macOS and Windows), or, where a format pairs files
by stem (YOLO's ``x.jpg`` + ``x.txt``), one stem. The first in relative-path order
keeps its name; each other one, and any file name over ``MAX_EXPORT_NAME_BYTES``, gets
``<stem, cut to fit>-<8 hex of the SHA-256 of its relative path><suffix>``. The label
table and the manifest keep the original relative path. Temporary files use short
names of their own, so a 250-byte file name still has room for them.

Flat names (``flat_export_names``): the layouts of Roboflow's exports (YOLO
``train/images/``, class folders, Roboflow classification) hold bare file names, so
a sub-folder becomes part of the name (``a/b/x.jpg`` -> ``a__b__x.jpg``, ',' -> '_'
for CSV files), made unique by stem as above, across the whole export (not per split:
an image keeps its name if the split fractions change). Every flat export uses this
one rule, so an image has one export name; ``write_export_names`` records it, with
the image's split, in ``OUT/export_names.parquet``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal, Protocol

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from tasks.labels import OutputLayout
    from tasks.splits import Splits

MAX_EXPORT_NAME_BYTES = 200  # NAME_MAX is 255: room for a suffix tools add
_MAX_SUFFIX_BYTES = 16
ClashBy = Literal["name", "stem"]
FLAT_SEPARATOR = "__"  # a/x.jpg -> a__x.jpg in flat exports
# OUT/export_names.parquet: one row per image of the flat exports (see
# ``write_export_names``); ``split`` is train, val or test (YOLO's and Roboflow's
# folder for val is "valid", see ``tasks.splits.ROBOFLOW_FOLDERS``).
EXPORT_NAMES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("relative_path", pa.string()),
        ("source_uri", pa.string()),
        ("split", pa.string()),
        ("export_name", pa.string()),
    ]
)


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


def flatten_relative_path(relative_path: str) -> str:
    """``a/b/x.jpg`` -> ``a__b__x.jpg``; ',' becomes '_' (CSV files list the names)."""
    parts = PurePosixPath(relative_path).parts
    return FLAT_SEPARATOR.join(parts).replace(",", "_")


def flat_export_names(relative_paths: Sequence[str]) -> list[str]:
    """Bare file names for ``relative_paths``, unique by stem and short enough.

    The one naming rule of every flat export (see the module docstring): flattened
    with ``flatten_relative_path``, then ``unique_export_names`` by stem, hashing the
    relative path. Pass all images of the export, sorted by relative path, so an
    image's name does not depend on its split or on which export asks.
    """
    return unique_export_names(
        [flatten_relative_path(path) for path in relative_paths],
        clash_by="stem",
        ids=relative_paths,
    )


# Names the quick path of ``flat_export_names_of`` takes as they are: ASCII, one
# suffix, no dot first, no empty or '.' parts; anything else goes the general way.
_PLAIN_PART = r"[A-Za-z0-9_\- ][A-Za-z0-9_.\- ]*"
_PLAIN_PATH = rf"^({_PLAIN_PART}/)*{_PLAIN_PART}\.[A-Za-z0-9]+$"


def flat_export_names_of(relative_paths: pa.Array) -> pa.Array:
    """``flat_export_names`` of an Arrow array of relative paths, the same names.

    For a run of 100,000 images the Python lists of the general rule (paths, flat
    names, taken keys) cost ~30 MB at once; when every path is plain (``_PLAIN_PATH``),
    no two flat stems clash case-insensitively and no name is too long, every image
    keeps its flattened name, which Arrow computes without Python strings. Otherwise
    the general rule runs.
    """
    import pyarrow.compute as pc

    paths = relative_paths.cast(pa.string())
    if len(paths) and paths.null_count == 0:
        plain = pc.all(pc.match_substring_regex(paths, _PLAIN_PATH)).as_py()
        flat = pc.replace_substring(paths, "/", FLAT_SEPARATOR)
        stems = pc.utf8_lower(pc.replace_substring_regex(flat, r"\.[A-Za-z0-9]+$", ""))
        longest = pc.max(pc.binary_length(flat)).as_py()
        distinct = pc.count_distinct(stems).as_py() == len(stems)
        if plain and distinct and longest <= MAX_EXPORT_NAME_BYTES:
            return flat
    return pa.array(flat_export_names(paths.to_pylist()), pa.string())


class NamedImage(Protocol):
    """What ``write_export_names`` reads of an exported image."""

    @property
    def image_id(self) -> str: ...
    @property
    def relative_path(self) -> str: ...
    @property
    def source_uri(self) -> str: ...
    @property
    def export_path(self) -> str: ...


def export_names_frame(images: Sequence[NamedImage], splits: Splits) -> pd.DataFrame:
    """One row per image: its ids, its split under ``splits`` and its export name."""
    return pd.DataFrame(
        {
            "image_id": [image.image_id for image in images],
            "relative_path": [image.relative_path for image in images],
            "source_uri": [image.source_uri for image in images],
            "split": [splits.split_of(image.image_id) for image in images],
            "export_name": [image.export_path for image in images],
        },
        columns=EXPORT_NAMES_SCHEMA.names,
    )


def write_export_names(
    layout: OutputLayout, images: Sequence[NamedImage], splits: Splits
) -> Path:
    """Write ``OUT/export_names.parquet``: which file each image became, in which
    split; returns its path.

    Flat exports rename files (``a/x.jpg`` -> ``a__x.jpg``, clashes hashed), so this
    table is how to get from an exported file back to the label table's row
    (``image_id`` + ``source_uri``). Columns: ``EXPORT_NAMES_SCHEMA``; one row per
    image passed (every readable image, labeled or not, in relative-path order).
    ``export_name`` is the bare file name (``ExportImage.export_path`` of a flat
    export); ``split`` is ``train``, ``val`` or ``test``, whose folder is
    ``ROBOFLOW_FOLDERS[split]`` in YOLO and Roboflow layouts and ``split`` itself in
    the class folders. Every flat exporter writes it; given the same images and
    splits they write the same bytes, so the last writer does not matter.
    """
    from tasks.labels import write_parquet_atomically

    write_parquet_atomically(
        export_names_frame(images, splits), layout.export_names, EXPORT_NAMES_SCHEMA
    )
    return layout.export_names
