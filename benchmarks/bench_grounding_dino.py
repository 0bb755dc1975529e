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
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import gdino_bench_common as common


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
        "--profile",
        action="store_true",
        help="after timing, cProfile one more (b) run and print the top entries",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.put_repo_on_path()
    _quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gdino-bench-") as scratch:
        report = run_benchmark(args, Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


def _quiet_libraries() -> None:
    """No weight-loading progress bars between the table's lines."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def run_benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Build, warm up, time (a), (b), (c) interleaved, print and return everything."""
    from model_loaders.cache import get_model
    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec
    from tasks.settings import LabelSettings

    model_dir, build_s = _model_dir(args, scratch)
    classes = common.class_names(args.classes)
    images, source = common.sample_images(
        args.images, common.parse_size(args.image_size)
    )
    paths = common.write_jpegs(images, scratch / "photos")
    warm_folder = scratch / "warmup"
    common.write_jpegs(images[: args.batch_size], warm_folder)

    spec = ModelSpec(
        model=str(model_dir), device=args.device, batch_size=args.batch_size
    )
    settings = LabelSettings(
        ontology=Ontology.from_class_options(classes),
        model=spec,
        chunk_size=max(args.images, 1),
    )
    load_start = time.perf_counter()
    backend = get_model(spec)  # the per-process cache label_chunk reads from
    load_s = time.perf_counter() - load_start
    texts = [t.text for t in backend.texts_for(settings.ontology)]
    sync = common.device_sync(backend.device)

    raw_batches = common.prepare_raw_batches(
        backend.processor,
        [common.read_rgb(p) for p in paths],
        texts,
        batch_size=args.batch_size,
        device=backend.device,
        dtype=backend.dtype,
    )
    modes = {
        "a": (args.images, lambda: common.run_raw_forward(backend.model, raw_batches)),
        "b": (
            args.images,
            lambda: common.run_label_chunk(scratch / "photos", settings, scratch),
        ),
        "c": (
            args.images,
            lambda: common.run_naive_loop(
                backend.model,
                backend.processor,
                paths,
                classes,
                device=backend.device,
                dtype=backend.dtype,
            ),
        ),
    }
    _warm_up(backend, raw_batches, warm_folder, settings, scratch, paths, classes)
    env = common.environment(backend.device)
    measurements = common.time_modes(modes, repeats=args.repeats, sync=sync)
    env["load_average_after"] = os.getloadavg()

    config = {
        **common.model_summary(backend.model, backend.processor),
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
        "repeats": args.repeats,
        "build_random_model_s": round(build_s, 2),
        "model_load_s_excluded": round(load_s, 2),
    }
    ratios, ratio_text = common.ratio_lines(
        measurements["a"], measurements["b"], measurements["c"], len(classes)
    )
    _print_report(env, config, measurements, ratio_text)
    if args.profile:
        print("\n" + _profile_pipeline(scratch / "photos", settings, scratch))
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
    if (folder / "config.json").exists():
        return folder, 0.0
    start = time.perf_counter()
    save_random_grounding_dino(folder, size=args.size)
    return folder, time.perf_counter() - start


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
    common.run_raw_forward(backend.model, raw_batches[:1])
    common.run_label_chunk(warm_folder, settings, scratch)
    common.run_naive_loop(
        backend.model,
        backend.processor,
        paths[:1],
        classes,
        device=backend.device,
        dtype=backend.dtype,
    )


def _print_report(
    env: dict[str, Any],
    config: dict[str, Any],
    measurements: dict[str, common.Measurement],
    ratio_text: list[str],
) -> None:
    print("\nenvironment:")
    for key, value in env.items():
        print(f"  {key}: {value}")
    print("config (model already loaded and warm; load time excluded from all modes):")
    for key, value in config.items():
        print(f"  {key}: {value}")
    rows = [
        [
            m.mode,
            m.images,
            m.best_wall,
            m.median_wall,
            m.best_ips,
            m.median_ips,
            round(sum(m.cpu_utils) / len(m.cpu_utils), 2),
            m.detections_per_image,
        ]
        for m in measurements.values()
    ]
    headers = [
        "mode",
        "images",
        "best s",
        "median s",
        "img/s best",
        "img/s median",
        "cpu util",
        "boxes/img",
    ]
    print("\n" + common.format_table(headers, rows))
    print("\n" + "\n".join(ratio_text))
    print("\nper repeat (a, b, c ran back to back; trust repeats with cpu util near")
    print(f"the thread count, {env['torch_threads']} here):")
    print(common.format_table(*_per_repeat(measurements)))


def _per_repeat(
    measurements: dict[str, common.Measurement],
) -> tuple[list[str], list[list[Any]]]:
    """Seconds and ratios of each repeat: the modes of one repeat shared one load."""
    a, b, c = (measurements[key] for key in "abc")
    headers = ["repeat", "a s", "b s", "c s", "lowest cpu util", "b/a", "b/c"]
    rows = []
    for index, walls in enumerate(zip(a.walls, b.walls, c.walls, strict=True)):
        utils = (a.cpu_utils[index], b.cpu_utils[index], c.cpu_utils[index])
        ips = [m.images / wall for m, wall in zip((a, b, c), walls, strict=True)]
        rows.append([index + 1, *walls, min(utils), ips[1] / ips[0], ips[1] / ips[2]])
    return headers, rows


def _profile_pipeline(folder: Path, settings: Any, scratch: Path) -> str:
    """cProfile of one (b) run: where the pipeline's time goes besides the model."""
    profiler = cProfile.Profile()
    profiler.runcall(common.run_label_chunk, folder, settings, scratch)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(15)
    return "cProfile of one (b) run:\n" + text.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
