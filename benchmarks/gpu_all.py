"""Every backend's throughput on one lent GPU, in one call of under 8 minutes, to one
JSON (issue 18, item 4).

Each model runs full size with random weights (nothing can be downloaded there), its
pipeline (b: ``plan_chunks`` + ``label_chunk`` over JPEG files: decode, preprocess,
forward, post-processing, thresholds, Parquet) against its raw forward (a: the
model's forward on inputs prepared before timing), b/a and the peak GPU memory:

- Grounding DINO-T: ``gpu_grounding_dino.run_all`` (float32 and bfloat16 at batch
  1, 8 and 16 on 1,000 images of 1280x960; (a) on the first ``--raw-images``, the
  naive per-class loop (c) on the first ``--naive-images``);
- Grounded SAM: Grounding DINO-T boxes + SAM ``vit_b`` (Meta's architecture) masks;
  (a) is Grounding DINO's forward, SAM's image encoder and its prompt encoder and
  mask decoder on the boxes the pipeline segments (found before timing); upscaling
  the masks to the image, thresholding and copying them to the host are the
  pipeline's post-processing, as for Grounding DINO;
- SAM 3: ``bench_sam3.run_benchmark`` (its (a), (b) and the model card's per-class
  loop (c)) on the real architecture (``random_init_sam3`` size ``full``: 1008 px,
  848 M parameters);
- CLIP ViT-B-32 (open_clip): classification; (a) is ``encode_image`` on
  preprocessed batches.

``--budget-s`` (default 420) guards the wall time: past it no new row starts, and
Grounding DINO may use at most ``--gdino-share`` of it, so every model gets a row.
A row that fails (OOM, a missing package) says why and the rest go on.

    python benchmarks/gpu_all.py            # on the GPU machine: $OUT/gpu_all.json
    python benchmarks/gpu_all.py --smoke    # tiny models, 2 images, CPU, seconds
    python benchmarks/gpu_all.py --device cpu --models grounded_sam --size dino=tiny \
        --size sam=vit_mid --other-images 16 --image-size 640x480   # a CPU b/a
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
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
    run_raw_forward,
)
from gdino_bench_report import environment
from gdino_bench_timeline import ForwardTimeline
from gdino_bench_timing import device_sync, time_modes

MODELS = ("grounding_dino", "grounded_sam", "sam3", "clip")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="Grounding DINO's")
    parser.add_argument("--other-images", type=int, default=64, help="other models'")
    parser.add_argument("--image-size", default="1280x960", help="WxH of every JPEG")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch-sizes", default="8,16,1", help="Grounding DINO's")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="Grounding DINO's")
    parser.add_argument("--batch-size", type=int, default=8, help="the other models'")
    parser.add_argument("--raw-images", type=int, default=128)
    parser.add_argument("--naive-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto (cuda if any), cpu")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--gdino-share", type=float, default=0.6)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--json", type=Path, help="default: $OUT/gpu_all.json")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models, 2 images, CPU, float32"
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="MODEL=SIZE",
        help="another size for one model (dino, sam, sam3, clip), e.g. dino=tiny",
    )
    args = parser.parse_args(argv)
    args.sizes = {"dino": "full", "sam": "vit_b", "sam3": "full", "clip": "ViT-B-32"}
    if args.smoke:
        args.sizes = {"dino": "tiny", "sam": "vit_tiny", "sam3": "tiny", "clip": "tiny"}
        args.images = args.other_images = args.classes = 2
        args.raw_images, args.naive_images = None, 1
        args.batch_sizes, args.dtypes, args.batch_size = "2", "float32", 2
        args.image_size, args.device, args.repeats = "320x240", "cpu", 1
    for override in args.size:
        name, _, size = override.partition("=")
        if name not in args.sizes or not size:
            parser.error(
                f"--size {override}: use MODEL=SIZE, MODEL in {list(args.sizes)}"
            )
        args.sizes[name] = size
    args.models = [m.strip() for m in args.models.split(",")]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "gpu_all.json"
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    common.put_repo_on_path()
    common.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="gpu-all-") as scratch:
        report = run_all(args, Path(scratch), start=start)
    for row in report["rows"]:
        print(json.dumps({k: v for k, v in row.items() if k != "details"}))
    print(f"total {report['total_s']} s")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def run_all(args: argparse.Namespace, scratch: Path, *, start: float) -> dict:
    """One or more rows per model, in ``MODELS`` order, within the budget; the JSON
    is rewritten after every model, so a call cut short still leaves its rows."""
    device = _device(args.device)
    deadline = start + args.budget_s
    rows: list[dict[str, Any]] = []
    config = {
        "image_size_wh": args.image_size,
        "classes": class_names(args.classes),
        "sizes": args.sizes,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "smoke": args.smoke,
    }
    report = {"environment": environment(device), "config": config, "rows": rows}
    for model in args.models:
        rows += _section_rows(model, args, scratch, device, deadline)
        report["total_s"] = round(time.perf_counter() - start, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _section_rows(
    model: str, args: argparse.Namespace, scratch: Path, device: Any, deadline: float
) -> list[dict[str, Any]]:
    """``model``'s rows; one row saying why when skipped or failed."""
    if time.perf_counter() > deadline:
        return [{"model": model, "note": "skipped: time budget reached"}]
    started = time.perf_counter()
    try:
        found = SECTIONS[model](args, scratch / model, device, deadline)
    except Exception as error:  # one model failing must not lose the others
        traceback.print_exc()
        found = [{"model": model, "note": f"failed: {_one_line(error)}"}]
    finally:
        _free_gpu(device)
    for row in found:
        row["section_s"] = round(time.perf_counter() - started, 1)
    return found


def grounding_dino(args, scratch: Path, device, deadline: float) -> list[dict]:
    """``gpu_grounding_dino.run_all``'s rows, flattened to this script's shape."""
    import gpu_grounding_dino

    share = time.perf_counter() + args.gdino_share * args.budget_s
    options = [
        f"--size={args.sizes['dino']}",
        f"--images={args.images}",
        f"--classes={args.classes}",
        f"--batch-sizes={args.batch_sizes}",
        f"--dtypes={args.dtypes}",
        f"--repeats={args.repeats}",
        f"--image-size={args.image_size}",
        f"--device={device}",
    ]
    for name in ("raw_images", "naive_images"):
        if getattr(args, name) is not None:
            options.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    report = gpu_grounding_dino.run_all(
        gpu_grounding_dino.parse_args(options), scratch, deadline=min(deadline, share)
    )
    rows = []
    for found in report["rows"]:
        row = {
            "model": "grounding_dino",
            "dtype": found["dtype"],
            "batch_size": found["batch_size"],
            **_speeds(found.get("a"), found.get("b")),
            "peak_gpu_gib": found.get("peak_gpu_gib"),
        }
        if "note" in found:
            row["note"] = found["note"]
        row["details"] = found
        rows.append(row)
    rows[0]["config"] = report["config"]
    return rows


def grounded_sam(args, scratch: Path, device, deadline: float) -> list[dict]:
    """Grounding DINO boxes + SAM masks: pipeline vs the two models' forwards."""
    import torch

    from model_loaders.protocol import ModelSpec
    from model_loaders.random_init import save_random_grounding_dino
    from model_loaders.random_init_sam_clip import save_random_sam

    sam_type = args.sizes["sam"]
    spec = ModelSpec(
        task="segment",
        model=str(save_random_grounding_dino(scratch / "dino", args.sizes["dino"])),
        sam_checkpoint=str(save_random_sam(scratch / "sam.pth", sam_type)),
        sam_model_type=sam_type,
        device=str(device),
        batch_size=args.batch_size,
    )

    def raw(backend, settings, images) -> Callable[[], None]:
        dino = backend.boxes
        texts = [t.text for t in dino.texts_for(settings.ontology)]
        floor = settings.thresholds.floor(settings.ontology)
        found = dino.predict(images, settings.ontology, confidence_floor=floor)
        boxes = [
            backend.transform.apply_boxes_torch(
                torch.as_tensor(d.xyxy, dtype=torch.float32, device=backend.device),
                (image.height, image.width),
            )
            for image, d in zip(images, found, strict=True)
        ]
        dino_batches = prepare_raw_batches(
            dino.processor,
            images,
            texts,
            batch_size=args.batch_size,
            device=backend.device,
            dtype=next(dino.model.parameters()).dtype,
        )
        sam_batches = [
            torch.cat(
                [
                    backend.sam.preprocess(_sam_input(backend, image))
                    for image in images[start : start + args.batch_size]
                ]
            )
            for start in range(0, len(images), args.batch_size)
        ]

        def run() -> None:
            run_raw_forward(dino.model, dino_batches)
            with torch.inference_mode():
                for start, pixels in zip(
                    range(0, len(images), args.batch_size), sam_batches, strict=True
                ):
                    embeddings = backend.sam.image_encoder(pixels)
                    for row, image_boxes in enumerate(
                        boxes[start : start + args.batch_size]
                    ):
                        if len(image_boxes):
                            _sam_decoder(
                                backend.sam, embeddings[row : row + 1], image_boxes
                            )

        return run

    return [_pipeline_vs_raw("grounded_sam", args, scratch, spec, raw, deadline)]


def _sam_decoder(sam, embedding, boxes) -> None:
    """SAM's prompt encoder and mask decoder on one image's boxes (SAM input
    coordinates), in one call as the backend makes it: low-resolution masks only."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


def _sam_input(backend, image):
    """One image as SAM's encoder takes it before ``preprocess``: resized to its
    longest side, (1, 3, h, w) float on the device."""
    import numpy as np
    import torch

    resized = backend.transform.apply_image(np.asarray(image))
    tensor = torch.from_numpy(resized).to(backend.device)
    return tensor.permute(2, 0, 1).contiguous()[None].float()


def clip(args, scratch: Path, device, deadline: float) -> list[dict]:
    """CLIP classification: pipeline vs ``encode_image`` on preprocessed batches."""
    import torch

    from model_loaders.protocol import ModelSpec
    from model_loaders.random_init_sam_clip import save_random_open_clip

    folder = save_random_open_clip(scratch / "clip", args.sizes["clip"])
    spec = ModelSpec(
        task="classify",
        model=f"local-dir:{folder}",
        device=str(device),
        batch_size=args.batch_size,
    )

    def raw(backend, settings, images) -> Callable[[], None]:
        dtype = next(backend.model.parameters()).dtype
        batches = [
            torch.stack(
                [backend.preprocess(i) for i in images[s : s + args.batch_size]]
            ).to(backend.device, dtype)
            for s in range(0, len(images), args.batch_size)
        ]

        def run() -> None:
            with torch.inference_mode():
                for pixels in batches:
                    backend.model.encode_image(pixels, normalize=True)

        return run

    return [_pipeline_vs_raw("clip", args, scratch, spec, raw, deadline)]


def sam3(args, scratch: Path, device, deadline: float) -> list[dict]:
    """``bench_sam3.run_benchmark``: (a) raw, (b) pipeline, (c) per-class loop."""
    import bench_sam3

    options = [
        f"--size={args.sizes['sam3']}",
        f"--images={args.other_images}",
        f"--classes={args.classes}",
        f"--batch-size={args.batch_size}",
        f"--repeats={args.repeats}",
        f"--image-size={args.image_size}",
        f"--device={device.type}",
    ]
    scratch.mkdir(parents=True, exist_ok=True)
    with _gpu_peak(device) as peak:
        report = bench_sam3.run_benchmark(bench_sam3.parse_args(options), scratch)
    found = {m["mode"][:3]: m for m in report["results"]}
    return [
        {
            "model": "sam3",
            "dtype": report["config"]["dtype"],
            "batch_size": args.batch_size,
            **_speeds(found.get("(a)"), found.get("(b)")),
            "peak_gpu_gib": peak.gib,
            "details": report,
        }
    ]


SECTIONS = {
    "grounding_dino": grounding_dino,
    "grounded_sam": grounded_sam,
    "sam3": sam3,
    "clip": clip,
}


def _pipeline_vs_raw(
    model: str,
    args: argparse.Namespace,
    scratch: Path,
    spec: Any,
    make_raw: Callable[[Any, Any, list], Callable[[], None]],
    deadline: float,
) -> dict[str, Any]:
    """(a) ``make_raw(backend, settings, images)()`` vs (b) ``label_chunk`` over the
    same images as JPEG files, one warm-up each on one batch, then timed."""
    from model_loaders.batching import PreparesAhead
    from model_loaders.cache import get_model
    from model_loaders.ontology import Ontology
    from tasks.settings import LabelSettings

    images, _ = sample_images(args.other_images, parse_size(args.image_size))
    paths = write_jpegs(images, scratch / "photos")
    warm = scratch / "warm-up"
    write_jpegs(images[: args.batch_size], warm)
    settings = LabelSettings(
        ontology=Ontology.from_class_options(class_names(args.classes)),
        model=spec,
        chunk_size=len(paths),
    )
    backend = get_model(spec)  # the per-process cache label_chunk reads from
    sync = device_sync(backend.device)
    timeline = ForwardTimeline(backend) if isinstance(backend, PreparesAhead) else None
    with _gpu_peak(backend.device) as peak:
        raw = make_raw(backend, settings, [read_rgb(p) for p in paths])
        raw()  # warm-up
        run_label_chunk(warm, settings, scratch)
        sync()

        def pipeline() -> float:
            return run_label_chunk(paths[0].parent, settings, scratch)

        modes = {
            "a": (len(paths), raw),
            "b": (len(paths), timeline.timed(pipeline) if timeline else pipeline),
        }
        with timeline or nullcontext():
            measured = time_modes(
                modes, repeats=args.repeats, sync=sync, deadline=deadline, label=model
            )
    details: dict[str, Any] = {key: m.as_dict() for key, m in measured.items()}
    if timeline:  # per (b) repeat: fill, forwards, gaps, drain (gdino_bench_timeline)
        details["b_timeline_ms"] = timeline.runs
    return {
        "model": model,
        "dtype": str(next(_parameters(backend)).dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        **_speeds(measured["a"].as_dict(), measured["b"].as_dict()),
        "peak_gpu_gib": peak.gib,
        "details": details,
    }


def _speeds(raw: dict | None, pipeline: dict | None) -> dict[str, float | None]:
    """Best images/s of (a) and (b) and their ratio, None where not measured."""
    a = raw["images_per_s_best"] if raw else None
    b = pipeline["images_per_s_best"] if pipeline else None
    return {
        "raw_images_per_s": a,
        "pipeline_images_per_s": b,
        "b_over_a": round(b / a, 3) if a and b else None,
    }


def _parameters(backend: Any):
    model = getattr(backend, "model", None) or backend.boxes.model
    return model.parameters()


class _gpu_peak:  # noqa: N801 - used as a context manager, reads like one
    """Peak GPU memory allocated inside the block, GiB (None off CUDA)."""

    def __init__(self, device: Any) -> None:
        self.device, self.gib = device, None

    def __enter__(self) -> _gpu_peak:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            import torch

            self.gib = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _free_gpu(device: Any) -> None:
    """Drop the section's models (the ``get_model`` cache) before the next loads."""
    import gc

    from model_loaders.cache import clear

    clear()
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


if __name__ == "__main__":
    raise SystemExit(main())
