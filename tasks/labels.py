"""The label table: one row per detection, as Parquet shards under ``OUT/labels/``.

In memory a single image's labels are a ``supervision.Detections``; on disk and between
stages they are rows with the fixed columns below. One path goes each way, so every
stage reads and writes labels alike: ``label_columns`` turns an image's detections into
columns and ``columns_to_frame`` joins many images' columns into one frame (labeling
builds a chunk's frame this way, one DataFrame per chunk, not per image);
``frame_to_detections`` turns one image's rows back (preview, review, rendering).
``detections_to_frame`` is those two for a single image, for callers that have just one
(the tests build their label tables with it). Beside the labels, every chunk writes an
image manifest (``OUT/images/``): one row per image, labeled or skipped, so that exports
and reports know about images without labels and about the files that could not be read.

Segmentation labels carry their mask in the ``mask`` column as compressed COCO RLE, a
JSON string ``{"size": [h, w], "counts": "..."}`` (lossless, small, and written with its
chunk, so a run never holds more masks than one chunk's); detection and classification
rows leave it null. Classification rows are one per (image, class) with the whole image
as box.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import supervision as sv

from tasks.masks import masks_to_rles, rle_to_mask

LABEL_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("class_name", pa.string()),
        ("class_id", pa.int32()),
        ("prompt", pa.string()),
        ("confidence", pa.float64()),
        ("x_min", pa.float64()),
        ("y_min", pa.float64()),
        ("x_max", pa.float64()),
        ("y_max", pa.float64()),
        ("mask", pa.string()),  # COCO RLE as JSON; null without a mask
        ("model", pa.string()),
        ("run_id", pa.string()),
    ]
)
LABEL_COLUMNS = LABEL_SCHEMA.names

IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source_uri", pa.string()),
        ("relative_path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("orientation", pa.int32()),
        ("skipped_reason", pa.string()),
        ("run_id", pa.string()),
    ]
)
IMAGE_COLUMNS = IMAGE_SCHEMA.names


@dataclass(frozen=True)
class ImageRecord:
    """What the label table needs to know about one image (labeled or skipped).

    ``width``/``height`` are after EXIF orientation is applied (the frame boxes live
    in); ``orientation`` is the EXIF orientation tag of the file (1 = none), so exports
    can tell whether the stored file must be rotated before boxes line up with it.
    """

    source_uri: str
    relative_path: str
    image_id: str = ""
    width: int = 0
    height: int = 0
    orientation: int = 1
    skipped_reason: str | None = None


class OutputLayout:
    """Where each artefact of a run lives under the output folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.labels_dir = self.root / "labels"
        self.images_dir = self.root / "images"
        # Exports in Roboflow's layouts: one folder per split (train/, valid/, test/).
        self.coco_dir = self.root / "coco"
        self.yolo_dir = self.root / "yolo"
        self.voc_dir = self.root / "voc"
        # Each exported image's file name and split (exports flatten and rename).
        self.export_names = self.root / "export_names.parquet"
        self.classification_dir = self.root / "classification"
        self.class_folders_dir = self.classification_dir / "folders"
        self.class_table_csv = self.classification_dir / "labels.csv"
        self.class_table_json = self.classification_dir / "labels.json"
        self.roboflow_classification_dir = self.classification_dir / "roboflow"
        self.report = self.root / "report.md"

    def shard_paths(self, chunk_key: str) -> tuple[Path, Path]:
        """The (labels, images) Parquet shard paths of one chunk."""
        return (
            self.labels_dir / f"chunk-{chunk_key}.parquet",
            self.images_dir / f"chunk-{chunk_key}.parquet",
        )


def detections_to_frame(
    detections: sv.Detections, image: ImageRecord, *, model: str, run_id: str
) -> pd.DataFrame:
    """Rows of the label table for one image's detections.

    Only ``columns_to_frame([label_columns(...)])``, the path labeling writes through,
    so a table built here (as the tests build theirs) is what a run would write.
    """
    return columns_to_frame(
        [label_columns(detections, image, model=model, run_id=run_id)]
    )


def label_columns(
    detections: sv.Detections, image: ImageRecord, *, model: str, run_id: str
) -> dict[str, list | np.ndarray]:
    """The label table's columns for one image's detections, not yet a DataFrame.

    A labeling loop collects these per image and builds one frame per chunk
    (``columns_to_frame``): a DataFrame per image cost ~4 ms, as much as a fast GPU
    forward of that image.
    """
    n = len(detections)
    xyxy = detections.xyxy.astype(np.float64).reshape(-1, 4)
    return {
        "image_id": [image.image_id] * n,
        "source_uri": [image.source_uri] * n,
        "width": np.full(n, image.width, dtype=np.int32),
        "height": np.full(n, image.height, dtype=np.int32),
        "class_name": _data_column(detections, "class_name", n),
        "class_id": _required_array(detections.class_id, n, np.int32),
        "prompt": _data_column(detections, "prompt", n),
        "confidence": _required_array(detections.confidence, n, np.float64),
        "x_min": xyxy[:, 0],
        "y_min": xyxy[:, 1],
        "x_max": xyxy[:, 2],
        "y_max": xyxy[:, 3],
        "mask": _mask_column(detections, image, n),
        "model": [model] * n,
        "run_id": [run_id] * n,
    }


def columns_to_frame(parts: Sequence[dict[str, list | np.ndarray]]) -> pd.DataFrame:
    """One label-table frame of many images' ``label_columns``."""
    if not parts:
        return LABEL_SCHEMA.empty_table().to_pandas()
    return pd.DataFrame(
        {name: _concatenated([part[name] for part in parts]) for name in LABEL_COLUMNS}
    )


def _concatenated(pieces: list[list | np.ndarray]) -> list | np.ndarray:
    if isinstance(pieces[0], np.ndarray):
        return np.concatenate(pieces)
    return list(itertools.chain.from_iterable(pieces))


def frame_to_detections(frame: pd.DataFrame) -> sv.Detections:
    """A Detections for the rows of one image (``class_name``, ``prompt`` in ``data``).

    Rows with masks give a ``mask`` stack (a row without one gets an empty mask); rows
    without any leave ``mask`` None, as detection labels have.
    """
    if frame.empty:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=frame[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float32),
        mask=_masks_of(frame),
        confidence=frame["confidence"].to_numpy(dtype=np.float32),
        class_id=frame["class_id"].to_numpy(dtype=int),
        data={
            "class_name": frame["class_name"].to_numpy(dtype=object).astype(str),
            "prompt": frame["prompt"].to_numpy(dtype=object).astype(str),
        },
    )


def images_to_frame(images: list[ImageRecord], *, run_id: str) -> pd.DataFrame:
    """Rows of the image manifest."""
    frame = pd.DataFrame(
        [asdict(image) for image in images], columns=IMAGE_COLUMNS[:-1]
    )
    frame["run_id"] = run_id
    return frame[IMAGE_COLUMNS]


def write_parquet_atomically(
    frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None
) -> None:
    """Write ``frame`` to ``path`` via a temporary file and a rename (``schema``:
    the columns' types; None: inferred from ``frame``).

    A crash mid-write leaves only a temporary file, never a half shard that looks
    finished.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(fd)
    try:
        pq.write_table(table, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_labels(layout: OutputLayout) -> pd.DataFrame:
    """The whole label table of an output folder (empty, with its columns, if none).

    Its size grows with the dataset (2 M rows for 100,000 images is ~1 GB in pandas):
    code that walks a whole run reads it shard by shard (``iter_label_shards``).
    """
    return _read_shards(layout.labels_dir, LABEL_SCHEMA)


def read_images(
    layout: OutputLayout, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The whole image manifest of an output folder (only ``columns``, if given).

    One row per image, so small next to the label table; with ``columns`` (say
    ``["source_uri"]``) a caller holds just what it needs.
    """
    return _read_shards(layout.images_dir, IMAGE_SCHEMA, columns)


def shard_keys(layout: OutputLayout) -> list[str]:
    """The chunk keys of an output folder's shards, labels or manifest, sorted."""
    keys = set()
    for folder in (layout.labels_dir, layout.images_dir):
        if folder.is_dir():
            keys.update(
                path.name.removeprefix("chunk-").removesuffix(".parquet")
                for path in folder.glob("chunk-*.parquet")
            )
    return sorted(keys)


def read_label_shard(
    layout: OutputLayout, key: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The label rows of one chunk (empty, with the table's columns, if none)."""
    return _read_one(layout.shard_paths(key)[0], LABEL_SCHEMA, columns)


def read_image_shard(
    layout: OutputLayout, key: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The image manifest rows of one chunk (empty if it has no manifest shard)."""
    return _read_one(layout.shard_paths(key)[1], IMAGE_SCHEMA, columns)


def manifest_table(layout: OutputLayout, columns: Sequence[str]) -> pa.Table:
    """``columns`` of the whole image manifest as an Arrow table, plus ``shard``: the
    chunk key whose shards hold each image (and its labels).

    Arrow, not pandas: one row per image of a 100,000-image run is a few MB of
    buffers here, where Python string objects would take tens.
    """
    tables = []
    for key in shard_keys(layout):
        path = layout.shard_paths(key)[1]
        if path.is_file():
            table = _read_table(path, IMAGE_SCHEMA, columns)
            tables.append(
                table.append_column("shard", pa.array([key] * len(table), pa.string()))
            )
    if not tables:
        empty = _selected(IMAGE_SCHEMA.empty_table(), columns)
        return empty.append_column("shard", pa.array([], pa.string()))
    return pa.concat_tables(tables)


def iter_label_shards(
    layout: OutputLayout,
    *,
    label_columns: Sequence[str] | None = None,
    image_columns: Sequence[str] | None = None,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``(labels, images)`` of each chunk in turn, in chunk-key order.

    The way to walk a whole run in memory that does not grow with the dataset: a chunk
    writes its labels and its manifest together, so an image's labels are always in
    its own chunk's pair. Concatenated, the pairs are ``read_labels`` and
    ``read_images`` (same rows, same order). A chunk whose manifest is missing (a
    crash between the two writes) yields an empty manifest, as ``read_images`` would
    not list its images either. ``label_columns`` / ``image_columns``: read only
    these.
    """
    for key in shard_keys(layout):
        yield (
            read_label_shard(layout, key, label_columns),
            read_image_shard(layout, key, image_columns),
        )


def _read_shards(
    folder: Path, schema: pa.Schema, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    shards = sorted(folder.glob("chunk-*.parquet")) if folder.is_dir() else []
    if not shards:
        return _selected(schema.empty_table(), columns).to_pandas()
    tables = [_read_table(shard, schema, columns) for shard in shards]
    return pa.concat_tables(tables).to_pandas()


def _read_one(
    path: Path, schema: pa.Schema, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    if not path.is_file():
        return _selected(schema.empty_table(), columns).to_pandas()
    return _read_table(path, schema, columns).to_pandas()


def _read_table(
    path: Path, schema: pa.Schema, columns: Sequence[str] | None
) -> pa.Table:
    if columns is None:
        return _with_schema(pq.read_table(path), schema)
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in columns if c in present])
    wanted = pa.schema([schema.field(name) for name in columns])
    return _with_schema(table, wanted)


def _selected(table: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    return table if columns is None else table.select(list(columns))


def _with_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Shards written before a nullable column existed read with that column null."""
    for field in schema:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(len(table), type=field.type))
    return table.select(schema.names).cast(schema)


def _mask_column(
    detections: sv.Detections, image: ImageRecord, n: int
) -> list[str | None]:
    if detections.mask is None:
        return [None] * n
    masks = np.asarray(detections.mask, dtype=bool)
    if masks.shape != (n, image.height, image.width):
        raise ValueError(
            f"masks of shape {masks.shape} do not fit {n} detections on a "
            f"{image.width}x{image.height} image"
        )
    return [json.dumps(rle, separators=(",", ":")) for rle in masks_to_rles(masks)]


def _masks_of(frame: pd.DataFrame) -> np.ndarray | None:
    if "mask" not in frame.columns or frame["mask"].isna().all():
        return None
    height, width = int(frame["height"].iloc[0]), int(frame["width"].iloc[0])
    return np.stack(
        [
            rle_to_mask(json.loads(text))
            if isinstance(text, str)
            else np.zeros((height, width), dtype=bool)
            for text in frame["mask"].tolist()
        ]
    )


def _data_column(detections: sv.Detections, key: str, n: int) -> list[str]:
    values = detections.data.get(key)
    if values is None or len(values) != n:
        raise ValueError(f"detections lack data[{key!r}] for every box")
    return [str(v) for v in values]


def _required_array(values: np.ndarray | None, n: int, dtype: type) -> np.ndarray:
    if values is None:
        raise ValueError("detections lack class ids or confidences")
    return np.asarray(values, dtype=dtype).reshape(n)
