"""Labeling a chunk of images: decode with prefetch, batched inference, one Parquet
shard.

A chunk (many images, never one) is the unit of work of a Prefect task. Its shard is
named by a key over the chunk's files and the settings, so a rerun of the same work
finds the shard and skips the chunk. The model comes from the per-process cache: loaded
once per worker, never passed between tasks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import supervision as sv
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from model_loaders.batching import (
    PreparesAhead,
    UnusableImagesError,
    run_ahead,
    size_sorted_groups,
)
from model_loaders.cache import get_model
from model_loaders.ontology import Ontology
from tasks import progress
from tasks.credits import CreditAccount
from tasks.decode_ahead import DecodeAhead
from tasks.image_files import file_stamp
from tasks.images import DecodedImage, ImageRef, decode_with_prefetch
from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    ImageRecord,
    OutputLayout,
    columns_to_frame,
    images_to_frame,
    label_columns,
    read_images,
    write_parquet_atomically,
)
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions, discover, localize
from tasks.thresholds import keep_labels

# Decoded images waiting for batch mates of their size, in windows (batch size x 4):
# two windows fill the buckets of ~6 sizes (phones both ways, a few cameras) before one
# must go early, and, with the decode lookahead, hold at most ~3 windows of pixels.
MAX_HELD_WINDOWS = 2
# Batches prepared ahead of the model, and batches whose post-processing (thresholds,
# NMS, label columns, mask RLE) may wait behind it: enough to hide either side's
# jitter, few enough that memory stays a few batches.
BATCHES_AHEAD = 2


class ImageSelection(BaseModel):
    """Which of a source's images a run labels: all, only those not labeled yet in the
    output (new uploads, scheduled scans), and/or an explicit list (an upload event)."""

    model_config = ConfigDict(frozen=True)

    only_new: bool = Field(False, description="Skip images already in the output.")
    images: list[str] | None = Field(
        None, description="Only these images (relative paths or URIs)."
    )

    def apply(self, refs: list[ImageRef], out: str | None) -> list[ImageRef]:
        if self.images is not None:
            wanted = set(self.images)
            refs = [r for r in refs if r.relative_path in wanted or r.uri in wanted]
        if self.only_new and out is not None:
            seen = set(read_images(OutputLayout(out), ["source_uri"])["source_uri"])
            refs = [ref for ref in refs if ref.uri not in seen]
        return refs

    @property
    def incremental(self) -> bool:
        """Whether the run adds to the output rather than replacing it."""
        return self.only_new or self.images is not None


@dataclass(frozen=True)
class Chunk:
    """A slice of the source's images labeled by one task; ``key`` names its shard."""

    key: str
    refs: tuple[ImageRef, ...]


@dataclass
class ChunkResult:
    """What one chunk produced (also rebuilt from its shard when the chunk is
    skipped)."""

    key: str
    images: int
    labels: int
    skipped: list[tuple[str, str]] = field(
        default_factory=list
    )  # (relative path, reason)
    reused: bool = False
    credits: float = 0.0  # charged by this call (0 for images charged before)


def plan_chunks(
    source: str,
    settings: LabelSettings,
    out: str | None = None,
    sources: SourceOptions | None = None,
    *,
    selection: ImageSelection | None = None,
) -> list[Chunk]:
    """Discover the source's images and cut them into chunks of ``settings.chunk_size``.

    A chunk's key hashes its files (path, size and modification time of local files, the
    URI of remote ones) and the settings' fingerprint: the same files labeled the same
    way land in the same shard. ``out`` holds the cache that remote sources and video
    frames need, and the image manifest that ``selection.only_new`` compares against.
    """
    refs = discover(source, out, sources or SourceOptions())
    if selection is not None:
        refs = selection.apply(refs, out)
    fingerprint = settings.fingerprint()
    chunks = []
    for start in range(0, len(refs), settings.chunk_size):
        part = tuple(refs[start : start + settings.chunk_size])
        digest = hashlib.sha256(fingerprint.encode())
        for ref in part:
            digest.update(f"\0{ref.uri}\0{file_stamp(ref.uri)}".encode())
        chunks.append(Chunk(digest.hexdigest()[:20], part))
    progress.expect(len(refs))
    return chunks


def each_with_next(chunks: Sequence[Chunk]) -> Iterator[tuple[Chunk, Chunk | None]]:
    """Each chunk with the one labeled after it (None after the last): what
    ``label_chunk`` needs to decode the next chunk's first images ahead."""
    following = [*chunks[1:], None] if chunks else []
    return zip(chunks, following, strict=True)


def prune_stale_shards(out: str, chunks: list[Chunk]) -> int:
    """Delete shards of an earlier run with other files or settings; returns how many.

    The output folder then describes exactly this run, so exports never mix in labels
    made with other thresholds or of images that are gone.
    """
    layout = OutputLayout(out)
    keep = {path for chunk in chunks for path in layout.shard_paths(chunk.key)}
    removed = 0
    for folder in (layout.labels_dir, layout.images_dir):
        for shard in folder.glob("chunk-*.parquet") if folder.is_dir() else []:
            if shard not in keep:
                shard.unlink()
                removed += 1
    return removed


def label_chunk(
    chunk: Chunk,
    settings: LabelSettings,
    out: str,
    run_id: str,
    credits: CreditAccount | None = None,
    sources: SourceOptions | None = None,
    decode_ahead: DecodeAhead | None = None,
    next_chunk: Chunk | None = None,
) -> ChunkResult:
    """Label every image of ``chunk`` and write its labels and image manifest shards.

    With ``credits``, the chunk is refused (BudgetExceeded) before any labeling if its
    images would overspend, and its readable images are charged once the shards exist.
    Charging is idempotent, so a chunk found finished (a rerun, or a crash between
    writing and charging) is charged here too, never twice.

    With ``decode_ahead`` (one per run, shared by its chunks), the images it decoded for
    this chunk are taken, and ``next_chunk``'s first images are decoded into it while
    this chunk's last batches run, unless that chunk is finished already.
    """
    layout = OutputLayout(out)
    labels_path, images_path = layout.shard_paths(chunk.key)
    if _finished(layout, chunk):
        result = _result_from_shard(chunk.key, labels_path, images_path)
        if credits is not None:
            result.credits = credits.charge_images_shard(images_path, run_id).credits
        progress.advance(result.images)
        return result
    refs = localize(chunk.refs, out, sources or SourceOptions())
    if credits is not None:
        credits.check_chunk([ref.readable_path for ref in refs], run_id)

    ontology, thresholds = settings.ontology, settings.thresholds
    labels, records = predict_labels(
        refs,
        settings,
        confidence_floor=thresholds.floor(ontology),
        run_id=run_id,
        keep=functools.partial(
            keep_labels,
            thresholds=thresholds,
            class_names=ontology.class_names,
            nms=settings.nms,
            nms_iou=settings.nms_iou,
        ),
        on_window=progress.advance,
        decode_ahead=decode_ahead,
        following=(
            next_chunk.refs
            if next_chunk is not None and not _finished(layout, next_chunk)
            else ()
        ),
    )
    # Image manifest last: a chunk counts as done only when both shards exist.
    write_parquet_atomically(labels, labels_path, LABEL_SCHEMA)
    write_parquet_atomically(
        images_to_frame(records, run_id=run_id), images_path, IMAGE_SCHEMA
    )
    charged = credits.charge_images_shard(images_path, run_id) if credits else None
    return ChunkResult(
        key=chunk.key,
        images=len(records),
        labels=len(labels),
        skipped=[
            (r.relative_path, r.skipped_reason) for r in records if r.skipped_reason
        ],
        credits=charged.credits if charged else 0.0,
    )


def _finished(layout: OutputLayout, chunk: Chunk) -> bool:
    """Whether both of ``chunk``'s shards exist (the image manifest is written last)."""
    return all(path.exists() for path in layout.shard_paths(chunk.key))


def predict_labels(
    refs: Sequence[ImageRef],
    settings: LabelSettings,
    *,
    confidence_floor: float,
    run_id: str,
    keep: Callable[[sv.Detections], sv.Detections] = lambda detections: detections,
    on_window: Callable[[int], None] | None = None,
    decode_ahead: DecodeAhead | None = None,
    following: Sequence[ImageRef] = (),
) -> tuple[pd.DataFrame, list[ImageRecord]]:
    """Decode ``refs`` (prefetched) and run the model on them a batch at a time.

    Three stages overlap, so the model waits for the host as little as possible:
    a feeder thread (``run_ahead``) takes decoded images, groups them by size and
    prepares each batch (``PreparesAhead.prepare``: resize, normalise, stack) while
    the model runs the previous one; this thread runs the model; one post-processing
    thread turns each batch's predictions into label columns (``keep``, RLE masks)
    while the model runs the next.

    Images of one size are grouped before they reach the model
    (``size_sorted_groups``, at most ``MAX_HELD_WINDOWS`` windows of images held), so
    a folder of mixed sizes still runs full batches; rows and records come back in
    ``refs`` order whatever the grouping, and labels never depend on it (no padding).

    With ``decode_ahead``, the images it decoded for ``refs`` are taken, and once the
    last of ``refs`` is decoded, the first window of ``following`` (the next chunk) is
    decoded into it, so that the next call's first batch is ready sooner.

    The one labeling loop of the batch and of the preview: they differ only in the floor
    and in ``keep`` (the batch applies thresholds and NMS, the preview keeps every
    candidate). Returns the label rows and a record per image, skipped ones included:
    an image the model cannot take (see ``predict_usable``) is skipped with its reason
    and the rest of its batch is labeled as if it had not been there.
    """
    model = get_model(settings.model)
    batch_size = settings.model.batch_size
    window_size = batch_size * 4
    columns: dict[int, dict] = {}  # by position; one DataFrame at the end
    records: dict[int, ImageRecord] = {}
    unreadable = [0]  # met by the feeder since its last batch, for ``on_window``

    def readable() -> Iterator[tuple[int, DecodedImage]]:
        stream = decode_with_prefetch(
            refs,
            lookahead=window_size,
            decoded_ahead=decode_ahead.take() if decode_ahead is not None else None,
        )
        for position, item in enumerate(stream):
            if isinstance(item, DecodedImage):
                yield position, item
            else:  # unreadable: recorded with its reason, never sent to the model
                records[position] = item
                unreadable[0] += 1
        if decode_ahead is not None and following:
            decode_ahead.start(following[:window_size])

    def prepared_batches() -> Iterator[tuple[list, object, int]]:
        groups = size_sorted_groups(
            readable(),
            size_of=lambda pair: pair[1].image.size,
            batch_size=batch_size,
            group_size=batch_size,  # each full batch goes at once
            max_held=window_size * MAX_HELD_WINDOWS,
        )
        for group in groups:
            images = [item.image for _, item in group]
            passed, unreadable[0] = unreadable[0], 0
            yield group, _prepare_ahead(model, images, settings.ontology), passed
        if unreadable[0]:
            yield [], None, unreadable[0]

    def post_process(
        group: list, predictions: list, unusable: dict[int, str], _prepared: object
    ) -> None:
        # ``_prepared`` (the batch's pixels) is only held, so that its memory is given
        # back on this thread, not the model's.
        for index, ((position, item), detections) in enumerate(
            zip(group, predictions, strict=True)
        ):
            if detections is None:  # the model cannot take it: skipped, with why
                records[position] = ImageRecord(
                    item.record.source_uri,
                    item.record.relative_path,
                    skipped_reason=unusable[index],
                )
                continue
            records[position] = item.record
            columns[position] = label_columns(
                keep(detections),
                item.record,
                model=settings.model.model,
                run_id=run_id,
            )

    pending: deque[Future] = deque()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="postprocess") as post,
        contextlib.closing(run_ahead(prepared_batches(), depth=BATCHES_AHEAD)) as feed,
    ):
        for group, ahead, passed in feed:
            images_done = len(group) + passed
            if group:
                predictions, unusable = predict_usable(
                    model,
                    [item.image for _, item in group],
                    settings.ontology,
                    confidence_floor=confidence_floor,
                    prepared=ahead,
                )
                pending.append(
                    post.submit(post_process, group, predictions, unusable, ahead)
                )
                # The post-processing thread now holds the batch's last references:
                # freeing tens of MB of pixels and decoded images (munmap, arena
                # release) took ~15 ms per batch of 1280x960 photos, time the model
                # thread would otherwise spend before its next forward.
                del group, ahead, predictions
            while len(pending) > BATCHES_AHEAD:
                pending.popleft().result()
            if on_window is not None:
                on_window(images_done)
        while pending:
            pending.popleft().result()
    return (
        columns_to_frame([columns[p] for p in sorted(columns)]),
        [records[p] for p in sorted(records)],
    )


def _prepare_ahead(model, images: list, ontology: Ontology) -> object:
    """``model.prepare(images)`` for a backend that ``PreparesAhead``: its prepared
    call, or the ``UnusableImagesError`` naming images it cannot take; None for other
    backends, or when preparing failed otherwise (``predict`` meets that error again
    and ``predict_usable`` narrows it down)."""
    if not isinstance(model, PreparesAhead):
        return None
    try:
        return model.prepare(images, ontology)
    except UnusableImagesError as error:
        return error
    except Exception:  # noqa: BLE001 - met again, and handled, by predict_usable
        return None


def predict_usable(
    model,
    images: Sequence,
    ontology: Ontology,
    *,
    confidence_floor: float,
    prepared: object = None,
) -> tuple[list[sv.Detections | None], dict[int, str]]:
    """``model.predict`` on ``images``, leaving out any image the model cannot take.

    Returns one Detections per image (None for an image left out) and, by position,
    why each was left out. A backend names unusable images itself by raising
    ``UnusableImagesError`` before any forward pass (an image its processor cannot
    resize); they are dropped and the others predicted again. Any other error of a
    call with several images is narrowed down by predicting them one at a time; if
    no image works alone either, the fault is the model's, not the images', and the
    error is raised. Labels never depend on batch mates (no padding), so the
    images kept get the labels they would have had anyway.

    ``prepared``: what ``_prepare_ahead`` made of all of ``images`` (a prepared call,
    or the error preparing raised), used by the first attempt instead of preparing
    again.
    """
    reasons: dict[int, str] = {}
    remaining = list(range(len(images)))
    while remaining:
        try:
            ahead, prepared = prepared, None
            if isinstance(ahead, UnusableImagesError):
                raise ahead
            if ahead is not None:
                predictions = model.predict_prepared(
                    ahead, ontology, confidence_floor=confidence_floor
                )
            else:
                predictions = model.predict(
                    [images[i] for i in remaining],
                    ontology,
                    confidence_floor=confidence_floor,
                )
        except UnusableImagesError as error:
            dropped = {
                p: r for p, r in error.reasons.items() if 0 <= p < len(remaining)
            }
            if not dropped:
                raise
            reasons.update({remaining[p]: r for p, r in dropped.items()})
            remaining = [i for p, i in enumerate(remaining) if p not in dropped]
            continue
        except Exception:
            if len(remaining) < 2:
                raise
            return _predict_one_by_one(
                model, images, remaining, ontology, confidence_floor, reasons
            )
        found = dict(zip(remaining, predictions, strict=True))
        return [found.get(i) for i in range(len(images))], reasons
    return [None] * len(images), reasons


def _predict_one_by_one(
    model,
    images: Sequence,
    indices: list[int],
    ontology: Ontology,
    confidence_floor: float,
    reasons: dict[int, str],
) -> tuple[list[sv.Detections | None], dict[int, str]]:
    """Each image of ``indices`` predicted alone, to find which one fails the call."""
    found: dict[int, sv.Detections] = {}
    failures: list[Exception] = []
    for index in indices:
        try:
            (found[index],) = model.predict(
                [images[index]], ontology, confidence_floor=confidence_floor
            )
        except UnusableImagesError as error:
            reasons[index] = next(iter(error.reasons.values()), str(error))
        except Exception as error:  # noqa: BLE001 - one image must not fail the rest
            failures.append(error)
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reasons[index] = (
                f"the model failed on this image: {type(error).__name__}: {detail}"
            )[:500]
    if failures and not found:
        raise failures[0]  # no image works alone: a model problem, not an image's
    return [found.get(i) for i in range(len(images))], reasons


def _result_from_shard(key: str, labels_path: Path, images_path: Path) -> ChunkResult:
    images = pd.read_parquet(images_path, columns=["relative_path", "skipped_reason"])
    labels = pd.read_parquet(labels_path, columns=["image_id"])
    skipped = images[images["skipped_reason"].notna()]
    return ChunkResult(
        key=key,
        images=len(images),
        labels=len(labels),
        skipped=list(
            zip(skipped["relative_path"], skipped["skipped_reason"], strict=True)
        ),
        reused=True,
    )


plan_chunks_task = task(plan_chunks, name="plan-chunks", cache_policy=NO_CACHE)
prune_stale_shards_task = task(
    prune_stale_shards, name="prune-stale-shards", cache_policy=NO_CACHE
)
label_chunk_task = task(label_chunk, name="label-chunk", cache_policy=NO_CACHE)
