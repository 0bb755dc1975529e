"""Grounding DINO throughput on one model and one image set, three ways (CPU default).

(a) raw batched forward: processor outputs prepared beforehand, ``model(**inputs)``;
(b) full pipeline: ``plan_chunks`` + ``label_chunk`` over a folder of JPEG files (decode
    with prefetch, preprocess, batched inference, post-processing, thresholds, NMS,
    Parquet);
(c) naive loop, how Autodistill labels: one forward per class per image.

The model is loaded and warm before anything is timed: load time is excluded from all
three. b/a shows what the pipeline costs around the model, b/c what batching and joint
prompts buy. Weights are random (none can be downloaded here); compute equals a trained
model's.

    .venv/bin/python benchmarks/bench_grounding_dino.py            # mid model, ~5 min
    .venv/bin/python benchmarks/bench_grounding_dino.py --profile  # + cProfile of (b)
    .venv/bin/python benchmarks/bench_grounding_dino.py --size tiny --images 32 \
        --skip-naive --repeats 9   # b/a only: the host-side proxy for a fast GPU
    # ... --sleeping-forward 4.5: a 4.5 ms/img forward that leaves the CPU free
    .venv/bin/python benchmarks/bench_grounding_dino.py --size tiny --images 128 \
        --image-size 1280x960 --input-edges 800x1333 --sleeping-forward 28 \
        --skip-naive --timeline 3   # the host at GPU sizes, fed to a 35 img/s "GPU"
    .venv/bin/python benchmarks/bench_grounding_dino.py --mixed-sizes  # see below

``--mixed-sizes`` times the pipeline instead on a folder of 7 image sizes (both
orientations) against the same files sorted by size (``gdino_bench_mixed``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
from pathlib import Path
from typing import Any

import gdino_bench_common as common
from gdino_bench_images import (
    class_names,
    parse_size,
    read_rgb,
    sample_images,
    write_jpegs,
)
from gdino_bench_modes import (
    prepare_raw_batches,
    run_label_chunk,
    run_naive_loop,
    run_raw_forward,
)
from gdino_bench_report import environment, model_summary, print_cpu_report, ratio_lines
from gdino_bench_timing import device_sync, time_modes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "mid", "full"), default="mid")
    parser.add_argument("--images", type=int, default=16, help="images per repeat")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    parser.add_argument(
        "--image-size", default="640x480", help="WxH every image is resized to"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="reuse (or create) the random model here instead of a temporary folder",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's, one per core); 1 makes the "
        "ratios robust to other processes taking cores on a shared machine",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--chunk-size",
        type=int,
        help="images per labeling chunk in (b) (default: all in one chunk; a labeling "
        "run's default is 128, and every chunk pays the pipeline's fill and drain)",
    )
    parser.add_argument(
        "--no-decode-ahead",
        action="store_true",
        help="(b) without decoding the next chunk's first images during the last "
        "batches of a chunk (tasks.decode_ahead): every chunk then starts cold",
    )
    parser.add_argument(
        "--mixed-sizes",
        action="store_true",
        help="time the pipeline on a folder of 7 sizes (both orientations) vs the "
        "same files sorted by size, and with the old grouping (gdino_bench_mixed)",
    )
    parser.add_argument(
        "--skip-naive",
        action="store_true",
        help="time (a) and (b) only: the naive loop (c) takes ~15x their time, so "
        "more repeats of b/a fit where the machine is shared",
    )
    parser.add_argument(
        "--sleeping-forward",
        type=float,
        metavar="MS",
        help="the forward sleeps MS milliseconds per image and replays the real "
        "outputs: the CPU is free during it, as with a GPU (gdino_bench_sleeping)",
    )
    parser.add_argument(
        "--timeline",
        type=int,
        metavar="RUNS",
        default=0,
        help="after timing, RUNS more (b) runs, each cut into fill, forwards, gaps "
        "between them and drain (gdino_bench_timeline)",
    )
    parser.add_argument(
        "--input-edges",
        metavar="SHORTxLONG",
        help="the random model's image processor resizes to these edges instead of "
        "its own (800x1333: the real model's input, for a small model's host work "
        "at GPU-benchmark sizes; pair it with --sleeping-forward)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after timing, cProfile one more (b) run and print the top entries",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.put_repo_on_path()
    common.quiet_libraries()
    return common.run_in_scratch(args, run_benchmark, prefix="gdino-bench-")


def run_benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Build, warm up, time (a), (b), (c) interleaved, print and return everything."""
    from model_loaders.cache import get_model
    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec
    from tasks.settings import LabelSettings

    if args.mixed_sizes:
        return run_mixed_sizes(args, scratch)
    model_dir, build_s = _model_dir(args, scratch)
    classes = class_names(args.classes)
    images, source = sample_images(args.images, parse_size(args.image_size))
    paths = write_jpegs(images, scratch / "photos")
    warm_folder = scratch / "warmup"
    write_jpegs(images[: args.batch_size], warm_folder)

    spec = ModelSpec(
        model=str(model_dir), device=args.device, batch_size=args.batch_size
    )
    settings = LabelSettings(
        ontology=Ontology.from_class_options(classes),
        model=spec,
        chunk_size=args.chunk_size or max(args.images, 1),
    )
    load_start = time.perf_counter()
    backend = get_model(spec)  # the per-process cache label_chunk reads from
    load_s = time.perf_counter() - load_start
    texts = [t.text for t in backend.texts_for(settings.ontology)]
    sync = device_sync(backend.device)

    raw_batches = prepare_raw_batches(
        backend.processor,
        [read_rgb(p) for p in paths],
        texts,
        batch_size=args.batch_size,
        device=backend.device,
        dtype=backend.dtype,
    )

    def pipeline() -> float:
        return run_label_chunk(
            scratch / "photos",
            settings,
            scratch,
            decode_ahead=not args.no_decode_ahead,
        )

    modes = {
        "a": (args.images, lambda: run_raw_forward(backend.model, raw_batches)),
        "b": (args.images, pipeline),
        "c": (
            args.images,
            lambda: run_naive_loop(
                backend.model,
                backend.processor,
                paths,
                classes,
                device=backend.device,
                dtype=backend.dtype,
            ),
        ),
    }
    if args.skip_naive or args.sleeping_forward:
        del modes["c"]
    if args.sleeping_forward:
        from gdino_bench_sleeping import sleep_the_forward

        sleep_the_forward(backend, args.sleeping_forward)
    _warm_up(backend, raw_batches, warm_folder, settings, scratch, paths, classes)
    env = environment(backend.device)
    measurements = time_modes(modes, repeats=args.repeats, sync=sync)
    env["load_average_after"] = os.getloadavg()

    config = {
        **model_summary(backend.model, backend.processor),
        "size": args.size,
        "dtype": str(backend.dtype).removeprefix("torch."),
        "image_size_wh": args.image_size,
        "model_input_shape": list(raw_batches[0]["pixel_values"].shape[1:]),
        "images": args.images,
        "image_source": source,
        "classes": classes,
        "joint_texts": texts,
        "text_tokens": int(raw_batches[0]["input_ids"].shape[1]),
        "batch_size": args.batch_size,
        "chunk_size": settings.chunk_size,
        "decode_ahead": not args.no_decode_ahead,
        "repeats": args.repeats,
        "build_random_model_s": round(build_s, 2),
        "model_load_s_excluded": round(load_s, 2),
    }
    ratios, ratio_text = ratio_lines(
        measurements["a"], measurements["b"], measurements.get("c"), len(classes)
    )
    print_cpu_report(env, config, measurements, ratio_text)
    if args.profile:
        print("\n" + _profile_pipeline(scratch / "photos", settings, scratch))
    timeline = []
    if args.timeline:
        from gdino_bench_timeline import format_timeline, timed_runs

        timeline = timed_runs(backend, pipeline, args.timeline)
        print("\n" + format_timeline(timeline))
    return {
        "environment": env,
        "config": config,
        "results": [m.as_dict() for m in measurements.values()],
        "ratios": ratios,
        "timeline_ms": timeline,
    }


def run_mixed_sizes(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """``--mixed-sizes``: (s), (m), (o) of ``gdino_bench_mixed``, interleaved."""
    from gdino_bench_mixed import (
        MIXED_MODE_NAMES,
        mixed_modes,
        mixed_report,
        write_mixed_folders,
    )
    from gdino_bench_timing import MODE_NAMES

    from model_loaders.cache import get_model
    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec
    from tasks.settings import LabelSettings

    model_dir, build_s = _model_dir(args, scratch)
    mixed, by_size, sizes = write_mixed_folders(
        args.images, parse_size(args.image_size), scratch
    )
    spec = ModelSpec(
        model=str(model_dir), device=args.device, batch_size=args.batch_size
    )
    settings = LabelSettings(
        ontology=Ontology.from_class_options(class_names(args.classes)), model=spec
    )
    backend = get_model(spec)
    forwards: dict[str, int] = {}
    modes = mixed_modes(mixed, by_size, settings, scratch, args.images, forwards)
    modes["m"][1]()  # warm-up: allocator, caches, lazy imports
    MODE_NAMES.update(MIXED_MODE_NAMES)
    env = environment(backend.device)
    measurements = time_modes(
        modes, repeats=args.repeats, sync=device_sync(backend.device)
    )
    env["load_average_after"] = os.getloadavg()
    ratios, text = mixed_report(measurements, forwards)
    config = {
        "size": args.size,
        "images": args.images,
        "sizes_wh": [list(size) for size in sizes],
        "batch_size": args.batch_size,
        "chunk_size": settings.chunk_size,
        "classes": args.classes,
        "repeats": args.repeats,
        "build_random_model_s": round(build_s, 2),
    }
    print(f"\n{env}\n{config}\n\n{text}")
    return {
        "environment": env,
        "config": config,
        "results": [m.as_dict() for m in measurements.values()],
        "ratios": ratios,
    }


def _model_dir(args: argparse.Namespace, scratch: Path) -> tuple[Path, float]:
    """The random model's folder, built unless ``--model-dir`` already holds one."""
    from model_loaders.random_init import save_random_grounding_dino

    folder = args.model_dir or scratch / f"grounding-dino-{args.size}"
    if args.input_edges:  # a variant of the model: its own folder
        folder = folder.with_name(f"{folder.name}-edges-{args.input_edges}")
    if (folder / "config.json").exists():
        return folder, 0.0
    start = time.perf_counter()
    save_random_grounding_dino(folder, size=args.size)
    if args.input_edges:
        _resize_input(folder, parse_size(args.input_edges))
    return folder, time.perf_counter() - start


def _resize_input(folder: Path, edges: tuple[int, int]) -> None:
    """Save the model's processor again, resizing to (shortest, longest) edges."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    shortest, longest = edges
    processor.image_processor.size = {
        "shortest_edge": shortest,
        "longest_edge": longest,
    }
    processor.save_pretrained(folder)


def _warm_up(
    backend: Any,
    raw_batches: list[dict[str, Any]],
    warm_folder: Path,
    settings: Any,
    scratch: Path,
    paths: list[Path],
    classes: list[str],
) -> None:
    """One untimed pass of each mode on little data: allocator, caches, lazy imports."""
    run_raw_forward(backend.model, raw_batches[:1])
    run_label_chunk(warm_folder, settings, scratch)
    run_naive_loop(
        backend.model,
        backend.processor,
        paths[:1],
        classes,
        device=backend.device,
        dtype=backend.dtype,
    )


def _profile_pipeline(folder: Path, settings: Any, scratch: Path) -> str:
    """cProfile of one (b) run: where the pipeline's time goes besides the model."""
    profiler = cProfile.Profile()
    profiler.runcall(run_label_chunk, folder, settings, scratch)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(15)
    return "cProfile of one (b) run:\n" + text.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
