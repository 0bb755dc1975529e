"""``bench_grounding_dino.py --mixed-sizes``: the pipeline on a folder of mixed image
sizes against the same images sorted into one folder per size (issue 18, item 2).

A phone folder holds photos in both orientations, and a shared folder several cameras'
aspect ratios; a backend batches only images of one resized shape (no padding). Three
pipeline runs (``plan_chunks`` + ``label_chunk``) over the same images, interleaved in
every repeat:

- (s) sorted by size: the same files in one sub-folder per size of one folder
  (``sorted/640x480/...``): files come in size order, so every batch is full, in
  one run like (m): the reference throughput for exactly these pixels;
- (m) mixed: all images in one folder, sizes shuffled, as labeling runs now (images
  grouped by size before they reach the model, ``model_loaders.batching.
  size_sorted_groups``);
- (o) mixed, old grouping: windows of ``batch size x 4`` images in file order, as
  before the change (the backend then batches within a window only).

Target: m/s >= 0.8. Only the grouping differs between (m) and (o); labels are the same
(no padding; tests/model_loaders/test_batching.py).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gdino_bench_images import sample_images
from gdino_bench_modes import run_label_chunk
from gdino_bench_timing import Measurement
from PIL import Image


def mixed_sizes(base_wh: tuple[int, int]) -> list[tuple[int, int]]:
    """Seven sizes around ``base_wh`` (640x480 by default): 4:3, 3:2 and 16:9 in both
    orientations, and a square, so no two resize to one shape."""
    width, height = base_wh
    landscape = [
        (width, height),
        (width * 9 // 8, height),  # 3:2 at 640x480 -> 720x480
        (width, width * 9 // 16),  # 16:9 -> 640x360
    ]
    square = min(width, height) * 16 // 15
    return [*landscape, *[(h, w) for w, h in landscape], (square, square)]


def write_mixed_folders(
    count: int, base_wh: tuple[int, int], scratch: Path, seed: int = 0
) -> tuple[Path, list[Path], list[tuple[int, int]]]:
    """``count`` photos cycling through ``mixed_sizes``: one folder with all of them in
    shuffled order, and the same files sorted into one sub-folder per size. Returns
    (mixed folder, sorted folder, sizes)."""
    sizes = mixed_sizes(base_wh)
    photos, _ = sample_images(count, base_wh)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    mixed = scratch / "mixed"
    per_size = [scratch / "sorted" / f"{w:04d}x{h:04d}" for w, h in sizes]
    for folder in (mixed, *per_size):
        folder.mkdir(parents=True, exist_ok=True)
    for rank, index in enumerate(order):
        size = sizes[index % len(sizes)]
        image = photos[index].resize(size, Image.Resampling.BILINEAR)
        image.save(mixed / f"photo-{rank:04d}.jpg", quality=90)
        image.save(per_size[index % len(sizes)] / f"photo-{rank:04d}.jpg", quality=90)
    return mixed, scratch / "sorted", sizes


def arrival_order_groups(
    items: Iterable[Any], *, size_of: Any, batch_size: int, group_size: int, **_: Any
) -> Iterator[list[Any]]:
    """The grouping before the change: consecutive windows of ``batch_size x 4``
    images in file order (``group_size`` is now one batch: it is not the window)."""
    window: list[Any] = []
    for item in items:
        window.append(item)
        if len(window) == batch_size * 4:
            yield window
            window = []
    if window:
        yield window


def mixed_modes(
    mixed: Path,
    by_size: Path,
    settings: Any,
    scratch: Path,
    images: int,
    forwards: dict[str, int],
) -> dict[str, tuple[int, Any]]:
    """The (s), (m), (o) runs for ``gdino_bench_timing.time_modes``; each run also
    sets ``forwards[mode]``, the number of batched forward passes it made."""
    import tasks.label as label_module

    new_grouping = label_module.size_sorted_groups
    batch_size = settings.model.batch_size

    def run(mode: str, folder: Path, grouping: Any) -> float:
        forwards[mode] = 0

        def counted(items: Iterable[Any], **options: Any) -> Iterator[list[Any]]:
            for group in grouping(items, **options):
                forwards[mode] += forward_passes(
                    [item.image.size for _, item in group], batch_size
                )
                yield group

        label_module.size_sorted_groups = counted
        try:
            return run_label_chunk(folder, settings, scratch)
        finally:
            label_module.size_sorted_groups = new_grouping

    return {
        "s": (images, lambda: run("s", by_size, new_grouping)),
        "m": (images, lambda: run("m", mixed, new_grouping)),
        "o": (images, lambda: run("o", mixed, arrival_order_groups)),
    }


def forward_passes(sizes: list[tuple[int, int]], batch_size: int) -> int:
    """Forward passes a backend makes for one ``predict`` call of images of these
    sizes: each size's images in batches of ``batch_size`` (the benchmark's sizes all
    resize to different shapes, so size and shape groups agree)."""
    counts: dict[tuple[int, int], int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return sum(-(-n // batch_size) for n in counts.values())


MIXED_MODE_NAMES = {
    "s": "(s) same files sorted by size",
    "m": "(m) mixed folder, size-sorted groups",
    "o": "(o) mixed folder, old file-order windows",
}


def mixed_report(
    measurements: dict[str, Measurement], forwards: dict[str, int]
) -> tuple[dict, str]:
    """Per-repeat m/s and o/s (adjacent runs), their medians, forward passes per mode
    (not timed: the same on any machine), and the table text."""
    s, m, o = (measurements[k] for k in "smo")
    per_repeat = [
        {
            "repeat": i + 1,
            "s_ips": round(s.images / s.walls[i], 3),
            "m_ips": round(m.images / m.walls[i], 3),
            "o_ips": round(o.images / o.walls[i], 3),
            "m_over_s": round(s.walls[i] / m.walls[i], 3),
            "o_over_s": round(s.walls[i] / o.walls[i], 3),
            "cpu_util_min": round(
                min(s.cpu_utils[i], m.cpu_utils[i], o.cpu_utils[i]), 2
            ),
        }
        for i in range(min(len(s.walls), len(m.walls), len(o.walls)))
    ]
    ratios = {
        "m_over_s_median": statistics.median(r["m_over_s"] for r in per_repeat),
        "o_over_s_median": statistics.median(r["o_over_s"] for r in per_repeat),
        "m_over_s_of_medians": round(s.median_wall / m.median_wall, 3),
        "per_repeat": per_repeat,
        "forward_passes": dict(forwards),
        "images_per_forward": {
            mode: round(measurements[mode].images / n, 2)
            for mode, n in forwards.items()
        },
    }
    lines = [
        "| repeat | (s) img/s | (m) img/s | (o) img/s | m/s | o/s | min cpu util |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['repeat']} | {r['s_ips']} | {r['m_ips']} | {r['o_ips']} "
        f"| {r['m_over_s']} | {r['o_over_s']} | {r['cpu_util_min']} |"
        for r in per_repeat
    ]
    verdict = "met" if ratios["m_over_s_median"] >= 0.8 else "MISSED"
    lines.append(
        f"\nm/s median {ratios['m_over_s_median']:.3f} (target >= 0.8: {verdict}); "
        f"o/s median {ratios['o_over_s_median']:.3f}\n"
        f"forward passes {ratios['forward_passes']} (images per forward "
        f"{ratios['images_per_forward']})"
    )
    return ratios, "\n".join(lines)
