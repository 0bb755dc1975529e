"""Batching images without padding, shared by the transformers detectors.

Padding an image to share a batch with a bigger one changes DETR-family outputs (the
padded area takes part in attention), so a label would depend on which images happened
to share a batch. These helpers batch only images of the same resized shape, and
``size_sorted_groups`` brings images of one size together before they reach a backend,
so a folder of mixed sizes still fills its batches.

An image the processor cannot prepare (a 10000x10 strip resizes to a height of 0) must
not fail the images it was batched with: each image is prepared on its own, and the
ones that fail are reported together in one ``UnusableImagesError`` naming each image
and its reason, so the caller can skip them and predict the rest.
"""

from __future__ import annotations

import contextvars
import functools
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from PIL import Image

if TYPE_CHECKING:  # torch is imported by the backends; callers of the error need not
    import torch

T = TypeVar("T")


class UnusableImagesError(ValueError):
    """Some images of a ``predict`` call cannot be prepared for the model.

    ``reasons`` maps each one's position in the list given to ``predict`` to why. The
    other images are fine: predicting them without the unusable ones gives the same
    labels, since images are never padded to share a batch.
    """

    def __init__(self, reasons: dict[int, str]) -> None:
        self.reasons = dict(reasons)
        listed = "; ".join(f"image {i}: {r}" for i, r in sorted(self.reasons.items()))
        super().__init__(f"{len(self.reasons)} image(s) cannot be prepared: {listed}")


@runtime_checkable
class PreparesAhead(Protocol):
    """A backend whose ``predict`` splits in two: ``prepare``, the host-side work
    (resize, normalise, stack, tokenise), safe to run on another thread while the model
    runs an earlier call, and ``predict_prepared``, the model's part.

    ``predict(images, ...)`` must equal ``predict_prepared(prepare(images, ...), ...)``;
    ``prepare`` raises ``UnusableImagesError`` as ``predict`` would.
    """

    def prepare(self, images: Sequence[Image.Image], ontology: Any) -> Any: ...

    def predict_prepared(
        self, prepared: Any, ontology: Any, *, confidence_floor: float
    ) -> list[Any]: ...


@dataclass
class PreparedImage:
    """An image through its processor (resized and normalised, or only resized by a
    ``split_processor.SplitProcessor``), and where it came from."""

    index: int  # position in the caller's list
    pixel_values: torch.Tensor  # (3, H, W) at the processor's resized shape
    height: int  # original size: post-processing scales boxes back to it
    width: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixel_values.shape)


def prepare_images(
    images: Sequence[Image.Image],
    image_processor: Callable,
    *,
    together: Mapping[str, Any] | None = None,
) -> list[PreparedImage]:
    """Each image through ``image_processor`` without padding.

    Images are processed on a few threads (resizing and normalising release the GIL):
    serially, this host-side work alone would cap a fast GPU at ~50 images/s. With
    ``together`` (extra processor arguments that turn its padding off, such as
    ``{"do_pad": False}``), images of one size go through one processor call: the
    processor resizes them as one stacked tensor, the same pixels as one by one at a
    quarter less CPU; a size whose call fails is retried one image at a time, so the
    error still names each image.

    Raises:
        UnusableImagesError: If any image cannot be prepared (every image is tried
            first, so the error names all of them at once).
    """
    if together is None:
        groups = [[item] for item in enumerate(images)]
    else:
        by_size: dict[tuple[int, int], list[tuple[int, Image.Image]]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append((index, image))
        groups = list(by_size.values())

    def prepare(group: list[tuple[int, Image.Image]]) -> list[PreparedImage | str]:
        if len(group) > 1:
            try:
                return _prepared_together(group, image_processor, together or {})
            except Exception:  # noqa: BLE001 - each image again, to name the bad ones
                pass
        return [
            _prepared_alone(index, image, image_processor) for index, image in group
        ]

    if len(groups) < 2:
        outcomes = [prepare(group) for group in groups]
    else:
        outcomes = list(preprocess_pool().map(prepare, groups))
    found: dict[int, PreparedImage | str] = {}
    for group, results in zip(groups, outcomes, strict=True):
        found.update(zip((index for index, _ in group), results, strict=True))
    reasons = {i: o for i, o in found.items() if isinstance(o, str)}
    if reasons:
        raise UnusableImagesError(reasons)
    return [found[i] for i in range(len(images))]  # type: ignore[misc]


def _prepared_alone(
    index: int, image: Image.Image, image_processor: Callable
) -> PreparedImage | str:
    """One image through the processor, or why it cannot be."""
    try:
        pixels = image_processor(images=image.convert("RGB"), return_tensors="pt")
        values = pixels["pixel_values"][0]
    except Exception as error:  # noqa: BLE001 - one image must not fail the rest
        return _preparation_problem(image, error)
    if values.ndim != 3 or 0 in values.shape:
        return f"the model's image processor made pixels of shape {tuple(values.shape)}"
    return PreparedImage(index, values, image.height, image.width)


def _prepared_together(
    group: list[tuple[int, Image.Image]],
    image_processor: Callable,
    options: Mapping[str, Any],
) -> list[PreparedImage | str]:
    """Images of one size through one processor call (raises if it fails)."""
    rgb = [image.convert("RGB") if image.mode != "RGB" else image for _, image in group]
    values = image_processor(images=rgb, return_tensors="pt", **options)["pixel_values"]
    if values.ndim != 4 or len(values) != len(group) or 0 in values.shape:
        raise ValueError(f"pixels of shape {tuple(values.shape)}")
    return [
        PreparedImage(index, pixels, image.height, image.width)
        for (index, image), pixels in zip(group, values, strict=True)
    ]


def _preparation_problem(image: Image.Image, error: Exception) -> str:
    """Why an image could not be prepared, in words a user can act on."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = f"cannot prepare this image for the model ({image.width}x{image.height} px"
    ratio = max(image.width, image.height) / max(1, min(image.width, image.height))
    if ratio >= 100:
        reason += f", aspect ratio {ratio:.0f}:1"
    return f"{reason}): {type(error).__name__}: {detail}"[:500]


@functools.cache
def preprocess_pool() -> ThreadPoolExecutor:
    """One small pool per process, shared by every model (created on first use), for
    host-side image work that releases the GIL (resizing, normalising)."""
    workers = max(1, min(4, (os.cpu_count() or 1)))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")


def stacked_for(device: torch.device, rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``rows`` (one shape) stacked into one new tensor, in page-locked memory when
    ``device`` is CUDA, so that the model thread's ``.to(device, non_blocking=True)``
    copies it without stopping to wait."""
    import torch

    pixels = torch.empty(
        (len(rows), *rows[0].shape),
        dtype=rows[0].dtype,
        pin_memory=device.type == "cuda",
    )
    return torch.stack(list(rows), out=pixels)


def same_shape_batches(
    items: Sequence[T], *, shape: Callable[[T], tuple[int, ...]], batch_size: int
) -> list[list[T]]:
    """``items`` grouped by ``shape``, each group cut into batches of ``batch_size``."""
    buckets: dict[tuple[int, ...], list[T]] = defaultdict(list)
    for item in items:
        buckets[shape(item)].append(item)
    return [
        group[start : start + batch_size]
        for group in buckets.values()
        for start in range(0, len(group), batch_size)
    ]


def size_sorted_groups(
    items: Iterable[T],
    *,
    size_of: Callable[[T], Hashable],
    batch_size: int,
    group_size: int,
    max_held: int,
) -> Iterator[list[T]]:
    """Regroup a stream so that items of one size travel together, for ``predict``.

    A backend batches only images of one resized shape (no padding), so a window of a
    folder of mixed sizes (phones in both orientations, several cameras) ran as many
    small batches. Here each size has a bucket; a bucket that reaches ``batch_size``
    is ready, and ready batches are yielded together once they hold ``group_size``
    items (one ``predict`` call of several full batches). At most ``max_held`` items
    wait: when that many are held, the fullest bucket goes early with whatever is
    ready. At the end of the stream the rest goes as one group (the backend merges
    sizes that resize to one shape). Items of one size keep their order.

    Only which images share a call changes, never an image's label: backends do not
    pad, so an image's labels do not depend on its batch mates.
    """
    if batch_size < 1 or group_size < 1 or max_held < 1:
        raise ValueError("batch_size, group_size and max_held must be at least 1")
    buckets: dict[Hashable, list[T]] = {}
    ready: list[T] = []
    held = 0
    for item in items:
        key = size_of(item)
        bucket = buckets.setdefault(key, [])
        bucket.append(item)
        held += 1
        if len(bucket) >= batch_size:
            ready.extend(buckets.pop(key))
        if len(ready) < group_size and held >= max_held and buckets:
            fullest = max(buckets, key=lambda k: len(buckets[k]))
            ready.extend(buckets.pop(fullest))
        if len(ready) >= group_size or held >= max_held:
            yield ready
            held -= len(ready)
            ready = []
    rest = ready + [item for bucket in buckets.values() for item in bucket]
    if rest:
        yield rest


_END = object()


def run_ahead(items: Iterable[T], *, depth: int) -> Iterator[T]:
    """``items``, produced on a background thread at most ``depth`` items ahead.

    What lets a labeling loop prepare the next batch (wait for its decodes, group it
    by size, resize and normalise it) while the model runs the current one. The
    producer runs in a copy of the caller's context; its exceptions are raised here,
    in the consumer, at the item they stopped. Closing this iterator early (an error
    in the consumer) stops the producer and closes ``items`` on its own thread.
    """
    if depth < 1:
        raise ValueError("depth must be at least 1")
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stopped.is_set():
            try:
                ahead.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001 - raised again in the consumer
            put((_END, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(produce,), name="run-ahead", daemon=True
    )
    thread.start()
    try:
        while True:
            item, error = ahead.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stopped.set()
        thread.join()
