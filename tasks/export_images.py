"""Which images an export holds, in what order, with which labels.

COCO and YOLO differ only in how they write boxes. Which images are exported (not the
skipped ones), their order (by relative path, so two exports of the same table are
byte-identical) and which labels belong to each are decided here once, so the formats
cannot drift apart. What each file is called is ``tasks.export_names``; how it lands
in the export folder is ``tasks.export_files``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.export_names import (
    EXPORT_NAMES_SCHEMA,
    ClashBy,
    flat_export_names,
    flat_export_names_of,
    unique_export_names,
)
from tasks.labels import (
    LABEL_SCHEMA,
    OutputLayout,
    manifest_table,
    read_label_shard,
    shard_keys,
    write_parquet_atomically,
)
from tasks.splits import Splits

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


# Streaming: the same images, labels and names as ``images_to_export``, read from the
# output folder one chunk's shard at a time, so an export of 100,000 images holds one
# row per image (the plan) and the labels of a few chunks, never the whole table.

_PLAN_COLUMNS = [
    "image_id",
    "source_uri",
    "relative_path",
    "width",
    "height",
    "orientation",
    "skipped_reason",
]
_SHARDS_CACHED = 4  # chunks whose labels are kept while walking the plan


def arrow_on_system_allocator() -> None:
    """From here on, Arrow allocates with the C library's ``malloc`` (process-wide),
    unless ``ARROW_DEFAULT_MEMORY_POOL`` chose a pool.

    Why: exports run after labeling, whose freed activations stay in the glibc heap
    (``model_loaders.allocator`` keeps it for the next batch). Arrow's own pool
    (mimalloc) can reuse none of it and keeps its pages after a buffer is freed, so
    the exports of 100,000 images rose ~60 MiB over those of 1,000; on the system
    pool the plan and each shard read land in the heap labeling left
    (benchmarks/probe_export_memory.py). Buffers already allocated stay valid: each
    remembers its pool.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())


def plan_export(
    layout: OutputLayout,
    *,
    clash_by: ClashBy = "name",
    flatten: bool = False,
    splits: Splits | None = None,
) -> pd.DataFrame:
    """The readable images of ``layout`` as ``images_to_export`` would list them, one
    row each, without their labels: relative-path order, ``export_path`` (the same
    rule), ``shard`` (the chunk holding its labels) and, with ``splits``, ``split``.

    Strings are Arrow-backed: ~150 bytes an image, the only part of an export that
    grows with the dataset. Skipped images are kept (``skipped_reason`` set) after the
    readable ones, so labels can be checked against the whole manifest.

    Raises:
        ValueError: If two readable images share a relative path.
    """
    arrow_on_system_allocator()
    manifest = manifest_table(layout, _PLAN_COLUMNS)
    # One copy of the manifest at most: order by index arrays, then take once.
    readable_rows = pc.indices_nonzero(pc.is_null(manifest["skipped_reason"]))
    paths = pc.take(manifest["relative_path"], readable_rows).combine_chunks()
    by_path = pc.sort_indices(paths)  # stable, as ``images_to_export``'s sort
    paths = pc.take(paths, by_path)
    counts = pc.value_counts(paths)
    duplicated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        raise ValueError(
            f"images share a relative path: {sorted(duplicated.to_pylist())[:5]}"
        )
    if flatten:
        names = flat_export_names_of(paths)
    else:
        names = pa.array(
            unique_export_names(paths.to_pylist(), clash_by=clash_by), pa.string()
        )
    del paths, counts
    skipped_rows = pc.indices_nonzero(pc.is_valid(manifest["skipped_reason"]))
    order = pa.concat_arrays([pc.take(readable_rows, by_path), skipped_rows])
    table = manifest.take(order)
    del manifest
    table = table.append_column(
        "export_path",
        pa.concat_arrays([names, pa.array([""] * len(skipped_rows), pa.string())]),
    )
    plan = table.to_pandas(types_mapper=_ARROW_STRINGS.get)
    plan["shard"] = plan["shard"].astype("category")
    if splits is not None:
        plan["split"] = pd.Categorical(
            [splits.split_of(i) for i in table["image_id"].to_pylist()]
        )
    return plan


_ARROW_STRINGS = {pa.string(): pd.StringDtype("pyarrow")}


def readable_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """The exported rows of a plan (its readable images, which come first), in
    export order; a slice, not a copy."""
    return plan.iloc[: int(plan["skipped_reason"].isna().sum())]


def write_plan_export_names(
    layout: OutputLayout, plan: pd.DataFrame, splits: Splits
) -> Path:
    """``export_names.write_export_names`` for a streamed export: the plan's readable
    rows, their splits and export names; returns its path.

    The same rows and bytes as ``write_export_names`` of these images, without a
    Python string per cell: the plan's Arrow strings go to the file as they are
    (``str``, the dtype Python lists of strings become), so writing the names of
    100,000 images rose ~30 MiB over the plan instead of ~45
    (``benchmarks/probe_export_memory.py``).
    """
    readable = readable_plan(plan)
    frame = pd.DataFrame(
        {
            "image_id": readable["image_id"].astype("str"),
            "relative_path": readable["relative_path"].astype("str"),
            "source_uri": readable["source_uri"].astype("str"),
            "split": pd.Series(
                [splits.split_of(i) for i in readable["image_id"]],
                index=readable.index,
                dtype="str",
            ),
            "export_name": readable["export_path"].astype("str"),
        },
        columns=EXPORT_NAMES_SCHEMA.names,
    )
    write_parquet_atomically(frame, layout.export_names, EXPORT_NAMES_SCHEMA)
    return layout.export_names


def iter_export_images(
    layout: OutputLayout, plan: pd.DataFrame, *, class_names: list[str]
) -> Iterator[ExportImage]:
    """The plan's readable images with their labels, in the plan's order.

    Each chunk's labels are read when its first image comes up and kept for the few
    chunks in use (runs label chunks in relative-path order, so each shard is read
    once); labels are ordered and checked as in ``images_to_export``. A chunk none of
    whose images is readable is still checked at the end, so a bad table raises here
    as it does there (exports write into a temporary folder, so nothing half-written
    is left).

    Raises:
        ValueError: As ``images_to_export``.
    """
    checker = _LabelChecker(plan, class_names)
    cache: OrderedDict[str, dict] = OrderedDict()
    empty = LABEL_SCHEMA.empty_table().to_pandas()
    for row in readable_plan(plan).itertuples(index=False):
        key = str(row.shard)
        if key not in cache:
            cache[key] = checker.grouped(read_label_shard(layout, key), key)
            if len(cache) > _SHARDS_CACHED:
                cache.popitem(last=False)
        cache.move_to_end(key)
        yield ExportImage(
            relative_path=str(row.relative_path),
            source_uri=str(row.source_uri),
            width=int(row.width),
            height=int(row.height),
            orientation=int(row.orientation),
            labels=cache[key].get((str(row.image_id), str(row.source_uri)), empty),
            export_path=str(row.export_path),
            image_id=str(row.image_id),
        )
    for key in shard_keys(layout):
        if key not in checker.seen:
            checker.grouped(read_label_shard(layout, key), key)


class _LabelChecker:
    """The checks of ``images_to_export`` on one chunk's labels at a time."""

    def __init__(self, plan: pd.DataFrame, class_names: list[str]) -> None:
        self._plan = plan
        self._class_names = class_names
        self._rows_of_shard = plan.groupby("shard", observed=True).indices
        self._known: set[tuple[str, str]] | None = None
        self.seen: set[str] = set()

    def grouped(self, labels: pd.DataFrame, key: str) -> dict:
        """``labels`` checked, ordered and grouped by (image_id, source_uri)."""
        self.seen.add(key)
        _check_classes(labels, self._class_names)
        if labels.empty:
            return {}
        rows = self._plan.iloc[self._rows_of_shard.get(key, [])]
        here = set(zip(rows["image_id"], rows["source_uri"], strict=True))
        unknown = {
            k
            for k in zip(labels["image_id"], labels["source_uri"], strict=True)
            if k not in here and k not in self._all_known()
        }
        if unknown:
            raise ValueError(
                "labels refer to images missing from the manifest: "
                f"{sorted(unknown)[:5]}"
            )
        ordered = labels.sort_values(
            _LABEL_ORDER, ascending=[False] + [True] * 5, kind="stable"
        )
        return dict(iter(ordered.groupby(["image_id", "source_uri"], sort=False)))

    def _all_known(self) -> set[tuple[str, str]]:
        if self._known is None:  # only for labels outside their own chunk's manifest
            self._known = set(
                zip(self._plan["image_id"], self._plan["source_uri"], strict=True)
            )
        return self._known
