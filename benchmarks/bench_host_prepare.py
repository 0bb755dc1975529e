"""What the host spends per image before a model runs: decode, then pixels.

Times, per image, on the pipeline's own functions and the same JPEG files:

- decode: ``tasks.images.decode_image`` (read, decode, EXIF, RGB, content hash);
- Grounding DINO (default) and SAM 3 (``--processor sam3``, its 1008 px square):
  - processor: the transformers image processor as it ships (resize, rescale,
    normalise to float32), one call per batch of one size;
  - split resize: ``SplitProcessor``'s host half (uint8 resize, one call per batch);
  - split normalise: its device half, timed here on the CPU (on a GPU it runs there);
- CLIP (``--processor clip``): open_clip's eval preprocess, image after image (as
  ``ClipModel.predict`` ran it on the model's thread) and on the shared preprocessing
  threads (as ``ClipModel.prepare`` runs it on the feeder).

Single-process, on ``--threads`` torch threads: the CPU cost that the labeling loop's
feeder has to hide behind the model.

    .venv/bin/python benchmarks/bench_host_prepare.py --image-size 640x480 \
        --input-edges 128x192                       # the tiny CPU proxy's sizes
    .venv/bin/python benchmarks/bench_host_prepare.py --image-size 1280x960 \
        --input-edges 800x1333                      # the GPU benchmark's sizes
    .venv/bin/python benchmarks/bench_host_prepare.py --image-size 1280x960 \
        --processor sam3                            # SAM 3's 1008x1008 input
    .venv/bin/python benchmarks/bench_host_prepare.py --image-size 1280x960 \
        --processor clip                            # CLIP: serial vs on the pool
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdino_bench_common import put_repo_on_path, quiet_libraries
from gdino_bench_images import parse_size, sample_images, write_jpegs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", default="640x480", help="WxH of the JPEGs")
    parser.add_argument(
        "--input-edges",
        default="800x1333",
        help="SHORTxLONG: the processor's shortest and longest edge",
    )
    parser.add_argument(
        "--processor",
        choices=("grounding-dino", "sam3", "clip"),
        default="grounding-dino",
        help="whose preprocessing (sam3: its 1008 px square, clip: open_clip's 224 px; "
        "--input-edges is Grounding DINO's only)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="best of")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def best_ms_per_image(run: Callable[[], object], images: int, repeats: int) -> float:
    """The fastest of ``repeats`` runs, per image, in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return round(best * 1000 / images, 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    put_repo_on_path()
    quiet_libraries()
    import torch

    from tasks.images import decode_image
    from tasks.sources import SourceOptions, discover

    torch.set_num_threads(args.threads)
    width, height = parse_size(args.image_size)
    with tempfile.TemporaryDirectory(prefix="host-prepare-") as scratch:
        photos, _ = sample_images(args.images, (width, height))
        write_jpegs(photos, Path(scratch) / "images")
        refs = discover(str(Path(scratch) / "images"), None, SourceOptions())
        decoded = [decode_image(ref).image for ref in refs]
        results = {
            "decode": best_ms_per_image(
                lambda: [decode_image(ref) for ref in refs], len(refs), args.repeats
            )
        }
    if args.processor == "clip":
        steps, model_input = clip_steps(args, decoded)
    else:
        steps, model_input = split_steps(args, decoded)
    results.update(steps)
    print(
        f"{len(decoded)} JPEGs {width}x{height} -> {args.processor} input "
        f"{model_input} (WxH), batch {args.batch_size}, {args.threads} torch "
        f"thread(s), best of {args.repeats}, ms per image:"
    )
    print("| step | ms/img |\n|------|--------|")
    for step, ms in results.items():
        print(f"| {step} | {ms} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def split_steps(
    args: argparse.Namespace, decoded: list[Any]
) -> tuple[dict[str, float], str]:
    """Grounding DINO's or SAM 3's processor against its ``SplitProcessor``."""
    from transformers import GroundingDinoImageProcessor, Sam3ImageProcessor

    from model_loaders.split_processor import SplitProcessor

    if args.processor == "sam3":
        processor = Sam3ImageProcessor()
    else:
        short, long = parse_size(args.input_edges)
        processor = GroundingDinoImageProcessor(
            size={"shortest_edge": short, "longest_edge": long}
        )
    split = SplitProcessor.matching(processor)
    assert split is not None
    batches = [
        decoded[start : start + args.batch_size]
        for start in range(0, len(decoded), args.batch_size)
    ]
    resized = [split(images=batch)["pixel_values"] for batch in batches]
    steps = {
        "processor": best_ms_per_image(
            lambda: [
                processor(images=batch, return_tensors="pt", do_pad=False)
                for batch in batches
            ],
            len(decoded),
            args.repeats,
        ),
        "split_resize": best_ms_per_image(
            lambda: [split(images=batch) for batch in batches],
            len(decoded),
            args.repeats,
        ),
        "split_normalise": best_ms_per_image(
            lambda: [split.normalise(pixels) for pixels in resized],
            len(decoded),
            args.repeats,
        ),
    }
    return steps, "x".join(str(n) for n in resized[0].shape[-2:][::-1])


def clip_steps(
    args: argparse.Namespace, decoded: list[Any]
) -> tuple[dict[str, float], str]:
    """open_clip's eval preprocess (ViT-B-32's: 224 px), one image after another on
    the model's thread as ``ClipModel.predict`` did, and on the shared preprocessing
    threads as ``ClipModel.prepare`` does."""
    import open_clip

    from model_loaders.batching import preprocess_pool

    preprocess = open_clip.image_transform(224, is_train=False)
    steps = {
        "preprocess_serial": best_ms_per_image(
            lambda: [preprocess(image) for image in decoded],
            len(decoded),
            args.repeats,
        ),
        "preprocess_pool": best_ms_per_image(
            lambda: list(preprocess_pool().map(preprocess, decoded)),
            len(decoded),
            args.repeats,
        ),
    }
    return steps, "224x224"


if __name__ == "__main__":
    raise SystemExit(main())
