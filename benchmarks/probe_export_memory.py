"""Peak memory of the steps after labeling against dataset size, in seconds, not in a
20-minute run (issue 18, item 3).

``bench_memory.py`` labels real images with the CLI; this probe fabricates what such a
run leaves in its output folder (a manifest shard and a label shard per chunk of 128
images, ~25 labels an image, written with ``tasks.labels``' own writers, chunk keys as
hashes like ``plan_chunks`` makes them) and then runs one step in a fresh child
process, reporting how far its peak RSS rose over the RSS after imports:

- ``plan``: ``plan_export`` and walking ``iter_export_images`` (what every export does);
- ``exports``: ``write_coco``, ``write_yolo`` and ``write_voc`` (1-byte source files,
  hard-linked into the exports);
- ``after``: the exports, the quality checks, the review queue and the report counts.

    .venv/bin/python benchmarks/probe_export_memory.py --images 1000,100000 --step plan
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CHUNK_SIZE = 128
LABELS_PER_IMAGE = 25
CLASS_NAMES = ["person", "cat", "dog", "car", "rocket"]


def fabricate(out: Path, source: Path, count: int) -> None:
    """The shards a ``count``-image run would write into ``out`` (and 1-byte files
    standing in for its images under ``source``)."""
    import numpy as np
    import supervision as sv

    from tasks.labels import (
        IMAGE_SCHEMA,
        LABEL_SCHEMA,
        ImageRecord,
        OutputLayout,
        columns_to_frame,
        images_to_frame,
        label_columns,
        write_parquet_atomically,
    )

    layout = OutputLayout(out)
    rng = np.random.default_rng(0)
    spots = np.arange(LABELS_PER_IMAGE)
    grid = np.stack([spots % 5 * 19, spots // 5 * 13], axis=1).astype(float)
    for start in range(0, count, CHUNK_SIZE):
        records, parts = [], []
        for index in range(start, min(start + CHUNK_SIZE, count)):
            relative = f"part-{index // 1000:03d}/img-{index:06d}.jpg"
            path = source / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            record = ImageRecord(
                source_uri=str(path),
                relative_path=relative,
                image_id=hashlib.sha256(relative.encode()).hexdigest(),
                width=128,
                height=96,
            )
            records.append(record)
            # Labels as a run keeps them: above the default threshold, and no two
            # boxes of a class overlapping much (NMS), so the quality checks pass.
            corners = grid + rng.uniform(0, 2, (LABELS_PER_IMAGE, 2))
            class_id = rng.integers(0, len(CLASS_NAMES), LABELS_PER_IMAGE)
            detections = sv.Detections(
                xyxy=np.hstack([corners, corners + 30]),
                confidence=rng.uniform(0.4, 1, LABELS_PER_IMAGE),
                class_id=class_id,
                data={
                    "class_name": np.array([CLASS_NAMES[i] for i in class_id]),
                    "prompt": np.array([CLASS_NAMES[i] for i in class_id]),
                },
            )
            parts.append(label_columns(detections, record, model="m", run_id="r"))
        key = hashlib.sha256(str(start).encode()).hexdigest()[:20]
        labels_path, images_path = layout.shard_paths(key)
        write_parquet_atomically(columns_to_frame(parts), labels_path, LABEL_SCHEMA)
        write_parquet_atomically(
            images_to_frame(records, run_id="r"), images_path, IMAGE_SCHEMA
        )


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(out: Path, step: str, freed_heap_mb: int) -> dict:
    """Run ``step`` on ``out`` in this (fresh) process; its RSS before and peak.

    ``freed_heap_mb``: a glibc heap block allocated, touched and freed first, as the
    model's activations leave one after labeling (``keep_freed_memory`` keeps it).
    """
    import numpy as np

    from model_loaders.allocator import keep_freed_memory
    from tasks.export_coco import write_coco
    from tasks.export_images import iter_export_images, plan_export
    from tasks.export_voc import write_voc
    from tasks.export_yolo import write_yolo
    from tasks.labels import OutputLayout
    from tasks.quality.task import check_output_quality
    from tasks.report import _count_tables
    from tasks.review_queue import build_review_queue  # noqa: F401 - import cost
    from tasks.splits import Splits
    from tasks.thresholds import Thresholds

    keep_freed_memory()  # as a labeling run leaves the allocator
    activations = np.ones(freed_heap_mb * 2**20 // 8)
    del activations
    layout = OutputLayout(out)
    before = _rss_kb()
    started = time.perf_counter()
    images = 0
    if step == "plan":
        plan = plan_export(layout, flatten=True)
        for _ in iter_export_images(layout, plan, class_names=CLASS_NAMES):
            images += 1
    else:
        splits = Splits()
        write_coco(layout, CLASS_NAMES, splits)
        write_yolo(layout, CLASS_NAMES, splits)
        write_voc(layout, CLASS_NAMES, splits)
        if step == "after":
            check_output_quality(out, class_names=CLASS_NAMES, thresholds=Thresholds())
            images = _count_tables(layout).images
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "step": step,
        "rss_before_mb": round(before / 1024, 1),
        "peak_mb": round(peak / 1024, 1),
        "rise_mb": round((peak - before) / 1024, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "images_walked": images,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="1000,100000")
    parser.add_argument("--step", default="plan", choices=["plan", "exports", "after"])
    parser.add_argument("--scratch", type=Path, help="keep (and reuse) shards here")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--freed-heap-mb",
        type=int,
        default=200,
        help="heap left free before the step, as labeling leaves it",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.step, args.freed_heap_mb)))
        return 0
    with tempfile.TemporaryDirectory(prefix="probe-export-") as tmp:
        scratch = args.scratch or Path(tmp)
        for count in (int(c) for c in args.images.split(",")):
            out = scratch / f"out-{count}"
            if not (out / "images").is_dir():
                started = time.perf_counter()
                fabricate(out, scratch / f"src-{count}", count)
                made = time.perf_counter() - started
                print(f"fabricated {count} images in {made:.1f} s", file=sys.stderr)
            for _ in range(args.repeats):
                command = [
                    sys.executable,
                    __file__,
                    f"--step={args.step}",
                    f"--freed-heap-mb={args.freed_heap_mb}",
                ]
                result = subprocess.run(
                    [*command, "--child", str(out)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=REPO_ROOT,
                )
                row = {"images": count, **json.loads(result.stdout.splitlines()[-1])}
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
