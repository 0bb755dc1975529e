"""Which images an export holds, in what order, with which labels.

COCO and YOLO differ only in how they write boxes. Which images are exported (not the
skipped ones), their order (by relative path, so two exports of the same table are
byte-identical) and which labels belong to each are decided here once, so the formats
cannot drift apart. What each file is called is ``tasks.export_names``; how it lands
in the export folder is ``tasks.export_files``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tasks.export_names import ClashBy, flat_export_names, unique_export_names

_LABEL_ORDER = ["confidence", "class_id", "x_min", "y_min", "x_max", "y_max"]


@dataclass(frozen=True)
class ExportImage:
    """One image to export with its labels (rows of the label table, maybe none).

    ``export_path`` is its path inside the export (see ``tasks.export_names``): the
    relative path unless that clashes or is too long.
    """

    relative_path: str
    source_uri: str
    width: int
    height: int
    orientation: int
    labels: pd.DataFrame
    export_path: str = ""
    image_id: str = ""  # the content hash: what the image's split follows from

    def __post_init__(self) -> None:
        if not self.export_path:
            object.__setattr__(self, "export_path", self.relative_path)


def images_to_export(
    images: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    class_names: list[str],
    clash_by: ClashBy = "name",
    flatten: bool = False,
) -> list[ExportImage]:
    """The manifest's readable images, sorted by relative path, each with its labels.

    Each gets an ``export_path`` unique within the export (``clash_by="stem"`` for a
    format that pairs files by stem) and at most ``MAX_EXPORT_NAME_BYTES`` long;
    with ``flatten``, a bare file name from ``flat_export_names`` (``clash_by`` is
    then ignored: flat names are unique by stem).

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
    relative_paths = [row.relative_path for row in rows]
    export_paths = (
        flat_export_names(relative_paths)
        if flatten
        else unique_export_names(relative_paths, clash_by=clash_by)
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
            image_id=str(row.image_id),
        )
        for row, export_path in zip(rows, export_paths, strict=True)
    ]


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
