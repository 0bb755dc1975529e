"""Test results on a sample: every candidate at a low floor, re-filtered model-free.

The preview runs the model once on a few sample images at a LOW confidence floor and
stores every candidate with its score, in the label-table schema the batch writes. A
change of threshold then only re-filters that table (milliseconds, no model), with
exactly the filter the batch applies (``tasks.thresholds``), so what the preview shows
at a threshold is what the batch labels. Previews cost 0 credits.

Layout under ``OUT/preview/``: ``candidates.parquet`` (label table),
``manifest.parquet`` (image manifest), ``sample.json`` (which images, seed, settings),
``images/`` (annotated copies, see ``tasks.render``) and ``cache/<key>/`` (every
preview computed, so a resumed or rerun flow never runs the model twice for the same
sample and descriptions).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.image_files import file_stamp
from tasks.images import ImageRef, SourceError
from tasks.label import predict_labels
from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    frame_to_detections,
    images_to_frame,
    write_parquet_atomically,
)
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions, canonical_source, discover, localize
from tasks.thresholds import NmsMode, Thresholds, keep_labels

PREVIEW_FLOOR = 0.05
DEFAULT_SAMPLE_SIZE = 4
PREVIEW_CREDITS = 0  # test results are free; the run says so
_IMAGE_KEY = ["image_id", "source_uri"]


class PreviewError(ValueError):
    """A preview that cannot be made or read; the message says what to do."""


class PreviewLayout:
    """Where each preview artefact lives under ``OUT/preview/``."""

    def __init__(self, out: str | Path) -> None:
        self.root = Path(out) / "preview"
        self.candidates = self.root / "candidates.parquet"
        self.manifest = self.root / "manifest.parquet"
        self.record = self.root / "sample.json"
        self.images_dir = self.root / "images"
        self.summary = self.root / "summary.md"
        self.cache_dir = self.root / "cache"

    def cached(self, key: str) -> tuple[Path, Path]:
        """The (candidates, manifest) files of the preview with cache ``key``."""
        folder = self.cache_dir / key
        return folder / "candidates.parquet", folder / "manifest.parquet"


class PreviewRecord(BaseModel):
    """What a preview was made of; saved as ``OUT/preview/sample.json``.

    ``settings`` holds the thresholds last shown; ``preview --from`` starts from them.
    """

    source: str
    sample: list[str] = Field(description="Relative paths of the sample images.")
    seed: int | None = Field(description="Seed of a random sample; None if picked.")
    sample_size: int
    floor: float = Field(description="Confidence floor the model was run at.")
    settings: LabelSettings
    key: str = Field(description="Cache key: sample files, ontology, model, floor.")
    run_id: str
    created_at: datetime
    credits: int = PREVIEW_CREDITS
    sources: SourceOptions = Field(
        default_factory=SourceOptions,
        description="How the source was reached (S3 endpoint, video frame rate).",
    )
    truth: dict | None = Field(
        None,
        description="The sample's human labels (tasks.preview_truth.PreviewTruth); "
        "their boxes are preview/truth.parquet.",
    )


def select_sample(
    refs: Sequence[ImageRef],
    *,
    size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    images: Sequence[str] | None = None,
) -> list[ImageRef]:
    """The sample images: picked by name, or a seeded random draw.

    A draw is ``random.Random(seed).sample`` over the sorted relative paths, so the same
    folder and seed give the same sample on every machine, and another seed another one.

    Args:
        refs: Every image of the source (``discover_images``).
        size: How many images to draw (all of them if the source has fewer).
        seed: Seed of the draw.
        images: Relative paths (or bare file names that name one file) to use instead
            of a draw, in the order given.

    Raises:
        SourceError: If the source has no images.
        PreviewError: If ``size`` < 1, or a named image is missing or ambiguous.
    """
    if not refs:
        raise SourceError("the source has no images to preview")
    by_path = {ref.relative_path: ref for ref in refs}
    if images:
        return [_named_image(name, by_path) for name in dict.fromkeys(images)]
    if size < 1:
        raise PreviewError(f"--sample {size}: must be at least 1")
    paths = sorted(by_path)
    chosen = random.Random(seed).sample(paths, min(size, len(paths)))
    return [by_path[path] for path in sorted(chosen)]


def _named_image(name: str, by_path: dict[str, ImageRef]) -> ImageRef:
    name = name.strip()
    if name in by_path:
        return by_path[name]
    matches = [path for path in by_path if PurePosixPath(path).name == name]
    if len(matches) == 1:
        return by_path[matches[0]]
    if matches:
        raise PreviewError(
            f"--images {name!r} names {len(matches)} files: use one of {matches[:5]}"
        )
    raise PreviewError(f"--images {name!r}: no such image in the source")


def plan_sample(
    source: str,
    out: str | None = None,
    *,
    size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    images: Sequence[str] | None = None,
    options: SourceOptions | None = None,
) -> list[ImageRef]:
    """Discover the source's images and select the sample (see ``select_sample``).

    ``options``: how to reach the source (S3 endpoint, video frames per second).
    """
    refs = discover(source, out, options or SourceOptions())
    return select_sample(refs, size=size, seed=seed, images=images)


def preview_floor(settings: LabelSettings, floor: float = PREVIEW_FLOOR) -> float:
    """The floor the preview runs at: ``floor``, or lower if a class threshold is lower.

    Every threshold a user may pick later down to the floor is then answered from the
    stored candidates.
    """
    return min(floor, settings.thresholds.floor(settings.ontology))


def preview_key(refs: Sequence[ImageRef], settings: LabelSettings, floor: float) -> str:
    """A hash of what decides the candidates: sample files (where they are, and
    their size and time for local ones), ontology, model, floor.

    Thresholds and NMS are left out on purpose: they only filter candidates. Device
    and batch size are left out too (they change how, not what, the model computes).
    """
    relevant = {
        "ontology": settings.ontology.to_data(),
        "model": settings.model.model_dump(exclude={"device", "batch_size"}),
        "floor": floor,
        "files": [(ref.uri, ref.relative_path, file_stamp(ref.uri)) for ref in refs],
    }
    text = json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def run_preview(
    source: str,
    refs: Sequence[ImageRef],
    settings: LabelSettings,
    out: str,
    *,
    run_id: str,
    seed: int | None,
    sample_size: int,
    floor: float = PREVIEW_FLOOR,
    options: SourceOptions | None = None,
) -> PreviewRecord:
    """Label the sample at the floor, keep every candidate, store it as the preview.

    A preview with the same key (same files, ontology, model and floor) is reused from
    ``OUT/preview/cache/`` without loading the model: a flow that is suspended while it
    waits for approval reruns from the top when resumed, and must not redo this.

    Returns:
        The record saved as ``sample.json``.
    """
    layout = PreviewLayout(out)
    floor = preview_floor(settings, floor)
    key = preview_key(refs, settings, floor)
    cached_candidates, cached_manifest = layout.cached(key)
    if not (cached_candidates.exists() and cached_manifest.exists()):
        candidates, records = predict_labels(
            localize(refs, out, options or SourceOptions()),
            settings,
            confidence_floor=floor,
            run_id=run_id,
        )
        manifest = images_to_frame(records, run_id=run_id)
        write_parquet_atomically(candidates, cached_candidates, LABEL_SCHEMA)
        # Manifest last: a cache entry counts only when both files exist.
        write_parquet_atomically(manifest, cached_manifest, IMAGE_SCHEMA)
    layout.root.mkdir(parents=True, exist_ok=True)
    kept_truth = _truth_still_valid(layout, refs, manifest_path=cached_manifest)
    _copy_atomically(cached_candidates, layout.candidates)
    _copy_atomically(cached_manifest, layout.manifest)
    record = PreviewRecord(
        source=canonical_source(source),
        sample=[ref.relative_path for ref in refs],
        seed=seed,
        sample_size=sample_size,
        floor=floor,
        settings=settings,
        key=key,
        run_id=run_id,
        created_at=datetime.now(timezone.utc),
        sources=options or SourceOptions(),
        truth=kept_truth,
    )
    save_record(out, record)
    return record


def _truth_still_valid(
    layout: PreviewLayout, refs: Sequence[ImageRef], *, manifest_path: Path
) -> dict | None:
    """The stored preview's truth, kept when the new preview has the same sample
    images (same files): new descriptions or thresholds keep measuring against it."""
    if not layout.record.is_file():
        return None
    try:
        old = PreviewRecord.model_validate_json(layout.record.read_text("utf-8"))
    except ValueError:
        return None
    if old.truth is None or old.sample != [ref.relative_path for ref in refs]:
        return None
    ids = set(pd.read_parquet(manifest_path, columns=["image_id"])["image_id"])
    return old.truth if set(old.truth.get("image_ids", [])) <= ids else None


def save_record(out: str | Path, record: PreviewRecord) -> None:
    """Write ``sample.json`` via a temporary file (written last: it marks a preview)."""
    path = PreviewLayout(out).record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(record.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)


def load_record(out: str | Path) -> PreviewRecord:
    """The stored preview's record.

    Raises:
        PreviewError: If ``OUT`` holds no preview, or an unreadable one.
    """
    layout = PreviewLayout(out)
    if not (layout.record.is_file() and layout.candidates.is_file()):
        raise PreviewError(
            f"no preview in {layout.root}: "
            f"run `autolabel preview SOURCE --out {out}` first"
        )
    try:
        return PreviewRecord.model_validate_json(layout.record.read_text("utf-8"))
    except ValueError as error:
        first = str(error).splitlines()[0]
        raise PreviewError(
            f"{layout.record} is not a preview record: {first}"
        ) from None


def read_candidates(out: str | Path) -> pd.DataFrame:
    """Every stored candidate of the preview (label-table columns)."""
    return pd.read_parquet(PreviewLayout(out).candidates)


def read_manifest(out: str | Path) -> pd.DataFrame:
    """The preview's image manifest (one row per sample image, skipped ones too)."""
    return pd.read_parquet(PreviewLayout(out).manifest)


def filter_candidates(
    candidates: pd.DataFrame,
    thresholds: Thresholds,
    *,
    nms: NmsMode,
    nms_iou: float,
    class_names: list[str],
) -> pd.DataFrame:
    """The candidates the batch would keep at ``thresholds``: threshold, then NMS.

    Per image, exactly ``label_chunk``'s filter (``apply_thresholds`` then ``apply_nms``
    on a Detections built by ``frame_to_detections``), so preview and batch cannot
    disagree. Rows come back unchanged (full float64 precision), in their stored order.
    """
    if candidates.empty:
        return candidates
    candidates = candidates.reset_index(drop=True)
    kept: list[np.ndarray] = []
    for _, group in candidates.groupby(_IMAGE_KEY, sort=False):
        detections = frame_to_detections(group)
        detections.data["row"] = group.index.to_numpy()
        detections = keep_labels(
            detections, thresholds, class_names, nms=nms, nms_iou=nms_iou
        )
        kept.append(np.asarray(detections.data.get("row", []), dtype=int))
    rows = np.sort(np.concatenate(kept)) if kept else np.array([], dtype=int)
    return candidates.iloc[rows]


def class_counts(
    candidates: pd.DataFrame, shown: pd.DataFrame, class_names: list[str]
) -> dict[str, tuple[int, int]]:
    """Per class ``(shown, total)``: kept at the thresholds; candidates at the floor."""
    totals = candidates["class_name"].value_counts()
    kept = shown["class_name"].value_counts()
    return {
        name: (int(kept.get(name, 0)), int(totals.get(name, 0))) for name in class_names
    }


def _copy_atomically(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(destination)


plan_sample_task = task(plan_sample, name="plan-sample", cache_policy=NO_CACHE)
run_preview_task = task(run_preview, name="run-preview", cache_policy=NO_CACHE)
