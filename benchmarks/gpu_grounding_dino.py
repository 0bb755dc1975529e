"""Grounding DINO-T throughput on one GPU: fp32 vs bf16, batch 1 vs 8, three ways.

Same modes and ratios as ``bench_grounding_dino.py`` (a: raw batched forward, b:
pipeline, c: naive per-class loop), on the full grounding-dino-tiny architecture (random
weights, 800 px short side), in one call of a few minutes. A lent GPU machine has torch
and transformers but maybe not this repo's other dependencies, so (b) runs the best
pipeline that imports there:

- ``label_chunk``: the whole task (needs prefect, pandas, pyarrow, supervision ...);
- ``predict``: JPEG decode + ``GroundingDinoModel.predict`` (needs supervision,
  pydantic), without thresholds, NMS and the Parquet write;
- neither: (b) is not measured and the table says why.

    python benchmarks/gpu_grounding_dino.py              # on the GPU machine
    python benchmarks/gpu_grounding_dino.py --smoke   # tiny model, 2 images, seconds

Prints one table and writes JSON to ``--json`` or ``$OUT/gpu_bench.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
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
    NAIVE_BOX_THRESHOLD,
    prepare_raw_batches,
    run_label_chunk,
    run_naive_loop,
    run_raw_forward,
)
from gdino_bench_report import environment, model_summary, print_gpu_report, ratio_lines
from gdino_bench_timeline import ForwardTimeline
from gdino_bench_timing import Measurement, device_sync, time_modes


@dataclass
class Context:
    """What every (dtype, batch size) configuration shares."""

    args: argparse.Namespace
    model_dir: Path
    scratch: Path
    paths: list[Path]
    warm_paths: list[Path]  # a batch of the same photos in a folder of their own
    classes: list[str]
    device: Any
    pipeline: str
    deadline: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "mid", "full"), default="full")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--raw-images",
        type=int,
        help="(a) on the first N images only (default: all): its inputs are "
        "preprocessed before timing, ~30 ms an image on the host",
    )
    parser.add_argument(
        "--naive-images",
        type=int,
        help="(c) on the first N images only (default: all): one forward per class",
    )
    parser.add_argument(
        "--image-size",
        default="1280x960",
        help="WxH of the JPEG files; the processor resizes to 800 px short side",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if any), cuda, cpu"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="start no new configuration or repeat after this many seconds",
    )
    parser.add_argument("--json", type=Path, help="default: $OUT/gpu_bench.json")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 2 images, float32 only, batch 1 and 2, one repeat",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.images, args.repeats = "tiny", 2, 1
        args.batch_sizes, args.dtypes = "1,2", "float32"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.dtypes = [d.strip() for d in args.dtypes.split(",")]
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "gpu_bench.json"
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    common.put_repo_on_path()
    common.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="gdino-gpu-bench-") as scratch:
        report = run_all(args, Path(scratch), deadline=start + args.budget_s)
    report["total_s"] = round(time.perf_counter() - start, 1)
    print(f"\ntotal {report['total_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def run_all(args: argparse.Namespace, scratch: Path, deadline: float) -> dict[str, Any]:
    """Every (dtype, batch size) row; one failing row is reported, not fatal."""
    from model_loaders.random_init import save_random_grounding_dino

    device = _device(args.device)
    build_start = time.perf_counter()
    model_dir = save_random_grounding_dino(scratch / "model", size=args.size)
    build_s = time.perf_counter() - build_start
    images, source = sample_images(args.images, parse_size(args.image_size))
    pipeline, pipeline_note = _pipeline_mode()
    warm_count = max(args.batch_sizes)
    ctx = Context(
        args=args,
        model_dir=model_dir,
        scratch=scratch,
        paths=write_jpegs(images, scratch / "photos"),
        warm_paths=write_jpegs(images[:warm_count], scratch / "warm-up"),
        classes=class_names(args.classes),
        device=device,
        pipeline=pipeline,
        deadline=deadline,
    )
    env = environment(device)
    print(f"environment: {env}")
    print(f"(b) pipeline mode: {pipeline} {pipeline_note}".rstrip(), flush=True)
    rows, summary = [], None
    for dtype in args.dtypes:
        naive = None  # (c) runs at batch 1 whatever the batch size: once per dtype
        for batch_size in args.batch_sizes:
            row, naive, summary = _run_row(ctx, dtype, batch_size, naive, summary)
            rows.append(row)
    config = {
        **(summary or {}),
        "size": args.size,
        "image_size_wh": args.image_size,
        "images": args.images,
        "image_source": source,
        "classes": ctx.classes,
        "repeats": args.repeats,
        "raw_images": len(_first(ctx.paths, args.raw_images)),
        "naive_images": len(_first(ctx.paths, args.naive_images)),
        "pipeline_mode": pipeline,
        "pipeline_note": pipeline_note,
        "build_random_model_s": round(build_s, 1),
    }
    print_gpu_report(env, config, rows, len(ctx.classes))
    return {"environment": env, "config": config, "rows": rows}


def _first(paths: list[Path], count: int | None) -> list[Path]:
    return paths if count is None else paths[:count]


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pipeline_mode() -> tuple[str, str]:
    """The most complete (b) that imports here, and a note naming what is missing."""
    try:
        import tasks.label  # noqa: F401
    except ImportError as error:
        missing = f"(label_chunk unavailable: {error})"
    else:
        return "label_chunk", ""
    try:
        import model_loaders.grounding_dino  # noqa: F401
    except ImportError as error:
        return "none", f"{missing}; (predict unavailable: {error}): (b) not measured"
    return "predict", f"{missing}: (b) = decode + predict, no thresholds/NMS/Parquet"


def _run_row(
    ctx: Context,
    dtype: str,
    batch_size: int,
    naive: Measurement | None,
    summary: dict[str, Any] | None,
) -> tuple[dict[str, Any], Measurement | None, dict[str, Any] | None]:
    """One table row, returned with the dtype's naive measurement and model summary."""
    row: dict[str, Any] = {"dtype": dtype, "batch_size": batch_size}
    if time.perf_counter() > ctx.deadline:
        row["note"] = "skipped: time budget reached"
        return row, naive, summary
    label = f"[{dtype} b{batch_size}] "
    try:
        measured, summary, peak, timeline = _measure(
            ctx, dtype, batch_size, naive is None, label
        )
    except Exception as error:  # report the row (e.g. OOM, no bf16) and go on
        row["note"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"
        print(f"{label}{row['note']}", flush=True)
        return row, naive, summary
    finally:
        _free_memory(ctx)
    naive = measured.get("c", naive)
    ratios, lines = ratio_lines(
        measured.get("a"), measured.get("b"), naive, len(ctx.classes)
    )
    print("\n".join(f"{label}{line}" for line in lines), flush=True)
    row.update({key: m.as_dict() for key, m in measured.items() if key != "c"})
    row["c"] = naive.as_dict() if naive else None
    row.update(ratios)
    row["peak_gpu_gib"] = peak
    row["b_timeline_ms"] = timeline  # per (b) repeat: fill, forwards, gaps, drain
    return row, naive, summary


@dataclass
class Loaded:
    """One row's model and processor, its joint prompt(s) and the (b) runner, if any."""

    model: Any
    processor: Any
    texts: list[str]
    pipeline_run: Callable[[], float] | None
    warm_run: Callable[[], float] | None = None  # (b) on ``Context.warm_paths``
    backend: Any = None  # the backend (b) runs, for its timeline


def _measure(
    ctx: Context, dtype: str, batch_size: int, with_naive: bool, label: str
) -> tuple[dict[str, Measurement], dict[str, Any], float | None, list[dict]]:
    """Load, warm up, time one (dtype, batch size): measurements, summary, peak GiB
    and the timeline of each (b) repeat (``gdino_bench_timeline``)."""
    import torch

    loaded = _load(ctx, dtype, batch_size)
    torch_dtype = getattr(torch, dtype)
    raw_paths = _first(ctx.paths, ctx.args.raw_images)
    naive_paths = _first(ctx.paths, ctx.args.naive_images)
    batches = prepare_raw_batches(
        loaded.processor,
        [read_rgb(p) for p in raw_paths],
        loaded.texts,
        batch_size=batch_size,
        device=ctx.device,
        dtype=torch_dtype,
    )
    summary = model_summary(loaded.model, loaded.processor)
    summary["model_input_shape"] = list(batches[0]["pixel_values"].shape[1:])
    summary["text_tokens"] = int(batches[0]["input_ids"].shape[1])
    n = len(ctx.paths)
    modes = {"a": (len(raw_paths), lambda: run_raw_forward(loaded.model, batches))}
    timeline = ForwardTimeline(loaded.backend) if loaded.backend else None
    if loaded.pipeline_run is not None:
        run_b = loaded.pipeline_run
        modes["b"] = (n, timeline.timed(run_b) if timeline else run_b)
    if with_naive:
        modes["c"] = (
            len(naive_paths),
            lambda: run_naive_loop(
                loaded.model,
                loaded.processor,
                naive_paths,
                ctx.classes,
                device=ctx.device,
                dtype=torch_dtype,
            ),
        )
    _warm_up(ctx, loaded, batches[:1], torch_dtype, with_naive)
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with timeline or nullcontext():
        measured = time_modes(
            modes,
            repeats=ctx.args.repeats,
            sync=device_sync(ctx.device),
            deadline=ctx.deadline,
            label=label,
        )
    runs = timeline.runs if timeline else []
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if cuda else None
    return measured, summary, None if peak is None else round(peak, 2), runs


def _load(ctx: Context, dtype: str, batch_size: int) -> Loaded:
    """Load this row's model the way (b) will use it, so all modes share one model."""
    if ctx.pipeline == "none":
        import torch
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        model = GroundingDinoForObjectDetection.from_pretrained(
            ctx.model_dir, dtype=getattr(torch, dtype)
        )
        processor = AutoProcessor.from_pretrained(ctx.model_dir)
        # The backend's joint prompt form, "a . b . c .", rebuilt without it.
        texts = [" . ".join(ctx.classes) + " ."]
        return Loaded(model.to(ctx.device).eval(), processor, texts, None)

    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec

    spec = ModelSpec(
        model=str(ctx.model_dir),
        device=str(ctx.device),
        dtype=dtype,
        batch_size=batch_size,
    )
    ontology = Ontology.from_class_options(ctx.classes)
    if ctx.pipeline == "label_chunk":
        from model_loaders.cache import get_model
        from tasks.settings import LabelSettings

        # The default chunk size, as users run it: each chunk pays its own pipeline
        # fill and drain (the timeline's gaps show them).
        settings = LabelSettings(ontology=ontology, model=spec)
        backend = get_model(spec)  # the per-process cache label_chunk reads from

        def run(paths: list[Path] = ctx.paths) -> float:
            return run_label_chunk(paths[0].parent, settings, ctx.scratch)

    else:
        from model_loaders.grounding_dino import GroundingDinoModel

        backend = GroundingDinoModel.load(spec)

        def run(paths: list[Path] = ctx.paths) -> float:
            return _run_predict(backend, paths, ontology, batch_size)

    texts = [t.text for t in backend.texts_for(ontology)]
    return Loaded(
        backend.model,
        backend.processor,
        texts,
        run,
        warm_run=lambda: run(ctx.warm_paths),
        backend=backend,
    )


def _run_predict(
    backend: Any, paths: list[Path], ontology: Any, batch_size: int
) -> float:
    """(b) without the task: decode files and predict in label_chunk's window size."""
    window = batch_size * 4
    boxes = 0
    for start in range(0, len(paths), window):
        images = [read_rgb(p) for p in paths[start : start + window]]
        detections = backend.predict(
            images, ontology, confidence_floor=NAIVE_BOX_THRESHOLD
        )
        boxes += sum(len(d) for d in detections)
    return boxes / max(len(paths), 1)


def _warm_up(
    ctx: Context,
    loaded: Loaded,
    first_batch: list[dict[str, Any]],
    dtype: Any,
    with_naive: bool,
) -> None:
    """One untimed pass of each mode on one batch: CUDA context, kernels, allocator,
    lazy imports."""
    run_raw_forward(loaded.model, first_batch)
    if loaded.warm_run is not None:
        loaded.warm_run()
    if with_naive:
        run_naive_loop(
            loaded.model,
            loaded.processor,
            ctx.paths[:1],
            ctx.classes,
            device=ctx.device,
            dtype=dtype,
        )
    device_sync(ctx.device)()


def _free_memory(ctx: Context) -> None:
    """Drop this row's model before the next one loads."""
    if ctx.pipeline == "label_chunk":
        from model_loaders.cache import clear

        clear()
    gc.collect()
    if ctx.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


if __name__ == "__main__":
    raise SystemExit(main())
