"""SAM 3 throughput on one model and one image set, three ways (CPU default).

(a) raw shared-vision forward: ``get_vision_features`` once per batch of images, then
    ``Sam3Model(vision_embeds=..., text_embeds=...)`` on batches of (image, prompt)
    pairs with the text embeddings computed beforehand; pixel values prepared
    beforehand, no pre- or post-processing;
(b) the project's pipeline: ``plan_chunks`` + ``label_chunk`` (``tasks.label``) over a
    folder of JPEG files with the backend ``get_model(ModelSpec(backend="sam3", ...))``
    returns (decode, preprocess, the backend's shared vision pass, post-processing,
    thresholds, NMS, Parquet shards);
(c) naive: per (image, class) one ``Sam3Processor(images=img, text=class)`` +
    ``Sam3Model(**inputs)`` + ``post_process_instance_segmentation``, as the model
    card's example does it.

The model is loaded and warm before anything is timed: load time is excluded from all
three. Weights are random (nothing can be downloaded here); compute equals a trained
model's of the same architecture.

    .venv/bin/python benchmarks/bench_sam3.py                      # mid, 5 classes
    .venv/bin/python benchmarks/bench_sam3.py --size tiny --images 4 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
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
from gdino_bench_modes import run_label_chunk
from gdino_bench_report import environment, format_table, print_cpu_report
from gdino_bench_timing import Measurement, device_sync, time_modes
from sam3_flops import component_flops, predicted_b_over_c, shares

# Issue 16's targets for a mid-size random SAM 3 at 5 classes on 2 CPU threads.
TARGET_B_OVER_A = 0.9
TARGET_B_OVER_C = 3.0
# How far the random model's scores spread. At 5 the mid model keeps about 2-12 of its
# 200 queries per (image, class) at the 0.35 threshold, as many as a labeler finds; at
# 100 it kept ~107, and the pipeline's mask NMS over ~540 masks per image (which the
# naive loop does not run) then cost more than the model. Tiny needs the wider spread.
DEFAULT_SCORE_SCALE = {"tiny": 100.0, "mid": 5.0, "full": 5.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=("tiny", "mid", "full"),
        default="mid",
        help="mid: the real SAM 3's compute shares at 504 px (random_init_sam3)",
    )
    parser.add_argument("--task", choices=("segment", "detect"), default="segment")
    parser.add_argument("--images", type=int, default=2, help="images per repeat")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument(
        "--batch-size", type=int, default=8, help="the backend's batch_size"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--image-size", default="640x480", help="WxH every image is resized to"
    )
    parser.add_argument(
        "--score-scale",
        type=float,
        help="spread of the random model's scores (save_random_sam3), so that the "
        "0.35 threshold keeps some detections (and their masks) and drops others; "
        "default per size: " + str(DEFAULT_SCORE_SCALE),
    )
    parser.add_argument(
        "--model-dir", type=Path, help="reuse (or create) the random model here"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.score_scale is None:
        args.score_scale = DEFAULT_SCORE_SCALE[args.size]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.put_repo_on_path()
    common.quiet_libraries()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    return common.run_in_scratch(args, run_benchmark, prefix="sam3-bench-")


def run_benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Build, warm up, time (a), (b), (c) interleaved, print and return everything."""
    from model_loaders.cache import get_model
    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec
    from tasks.settings import LabelSettings
    from tasks.thresholds import DEFAULT_THRESHOLD

    model_dir, build_s = _model_dir(args, scratch)
    classes = class_names(args.classes)
    images, source = sample_images(args.images, parse_size(args.image_size))
    paths = write_jpegs(images, scratch / "photos")
    warm_folder = scratch / "warmup"
    write_jpegs(images[:1], warm_folder)

    spec = ModelSpec(
        backend="sam3",
        task=args.task,
        model=str(model_dir),
        device=args.device,
        batch_size=args.batch_size,
    )
    settings = LabelSettings(
        ontology=Ontology.from_class_options(classes),
        model=spec,
        chunk_size=max(args.images, 1),
    )
    load_start = time.perf_counter()
    backend = get_model(spec)  # the per-process cache label_chunk reads from
    load_s = time.perf_counter() - load_start
    sync = device_sync(backend.device)

    prompts = backend.text_for(settings.ontology)  # text embeddings, once
    pixel_batches = _pixel_batches(backend, [read_rgb(p) for p in paths])
    with_masks = args.task == "segment"

    def naive() -> float:
        return run_naive(backend, paths, classes, DEFAULT_THRESHOLD, with_masks)

    modes = {
        "a": (args.images, lambda: run_raw(backend, pixel_batches, prompts)),
        "b": (
            args.images,
            lambda: run_label_chunk(scratch / "photos", settings, scratch),
        ),
        "c": (args.images, naive),
    }
    # Untimed warm-up on little data (allocator, caches, lazy imports): (b) on one
    # image runs every op (a) runs; (c) on one image and one class.
    run_label_chunk(warm_folder, settings, scratch)
    run_naive(backend, paths[:1], classes[:1], DEFAULT_THRESHOLD, with_masks)

    env = environment(backend.device)
    measurements = time_modes(modes, repeats=args.repeats, sync=sync)
    env["load_average_after"] = os.getloadavg()
    config = {
        **_model_summary(backend),
        "size": args.size,
        "task": args.task,
        "dtype": str(backend.dtype).removeprefix("torch."),
        "image_size_wh": args.image_size,
        "model_input_shape": list(pixel_batches[0].shape[1:]),
        "images": args.images,
        "image_source": source,
        "classes": classes,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threshold_b_and_c": DEFAULT_THRESHOLD,
        "score_scale": args.score_scale,
        "mode_b_runs": "tasks.label.plan_chunks + label_chunk (get_model cache)",
        "build_random_model_s": round(build_s, 2),
        "model_load_s_excluded": round(load_s, 2),
    }
    config.update(_flop_expectation(model_dir, args.classes))
    ratios, ratio_text = _ratios(measurements)
    print_cpu_report(env, config, measurements, ratio_text)
    per_image = {key: m.best_wall / m.images for key, m in measurements.items()}
    print("\nseconds per image (best repeat):")
    print(format_table(["mode", "s/image"], [[k, v] for k, v in per_image.items()]))
    return {
        "environment": env,
        "config": config,
        "results": [m.as_dict() for m in measurements.values()],
        "seconds_per_image_best": {k: round(v, 4) for k, v in per_image.items()},
        "ratios": ratios,
    }


def _model_dir(args: argparse.Namespace, scratch: Path) -> tuple[Path, float]:
    """The random model's folder, built unless ``--model-dir`` already holds one."""
    from model_loaders.random_init_sam3 import save_random_sam3

    folder = args.model_dir or scratch / f"sam3-{args.size}"
    if (folder / "config.json").exists():
        return folder, 0.0
    start = time.perf_counter()
    save_random_sam3(folder, args.size, score_scale=args.score_scale)
    return folder, time.perf_counter() - start


def _flop_expectation(model_dir: Path, classes: int) -> dict[str, float]:
    """The model's vision share of one (image, prompt) forward in FLOPs, and the b/c
    those FLOPs predict (``sam3_flops``), to read the measured b/c against."""
    from transformers import Sam3Config

    flops = component_flops(Sam3Config.from_pretrained(model_dir))
    return {
        "flops_per_image_prompt_g": round(flops["total"] / 1e9, 1),
        "flops_vision_share": round(shares(flops)["vision"], 4),
        "flops_predicted_b_over_c": round(predicted_b_over_c(flops, classes), 2),
    }


def _pixel_batches(backend: Any, images: Sequence[Any]) -> list[Any]:
    """Pixel values of ``batch_size``-image batches, on the device, before timing."""
    import torch

    pixels = backend.processor.image_processor(images=list(images), return_tensors="pt")
    values = pixels["pixel_values"].to(backend.device, backend.dtype)
    return list(torch.split(values, backend.spec.batch_size))


def run_raw(backend: Any, pixel_batches: Sequence[Any], prompts: Any) -> None:
    """Mode (a): vision encoder once per image, the rest per (image, prompt) pair.

    The same batching as the backend: each batch of images through
    ``get_vision_features``, then its (image, prompt) pairs in batches of
    ``batch_size`` through ``Sam3Model.forward`` with the precomputed text embeddings.
    """
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    model, size = backend.model, backend.spec.batch_size
    n_prompts = len(prompts.prompts)
    with torch.inference_mode():
        for pixel_values in pixel_batches:
            vision = model.get_vision_features(pixel_values=pixel_values)
            pairs = [(i, p) for i in range(len(pixel_values)) for p in range(n_prompts)]
            for start in range(0, len(pairs), size):
                chunk = pairs[start : start + size]
                rows = torch.tensor([i for i, _ in chunk], device=backend.device)
                cols = torch.tensor([p for _, p in chunk], device=backend.device)
                model(
                    vision_embeds=Sam3VisionEncoderOutput(
                        fpn_hidden_states=tuple(
                            t.index_select(0, rows) for t in vision.fpn_hidden_states
                        ),
                        fpn_position_encoding=tuple(
                            t.index_select(0, rows)
                            for t in vision.fpn_position_encoding
                        ),
                    ),
                    text_embeds=BaseModelOutputWithPooling(
                        pooler_output=prompts.embeds.index_select(0, cols)
                    ),
                    attention_mask=prompts.attention_mask.index_select(0, cols),
                )


def run_naive(
    backend: Any,
    paths: Sequence[Path],
    classes: Sequence[str],
    threshold: float,
    with_masks: bool,
) -> float:
    """Mode (c): per image, per class: processor, full model, post-processing.

    What the model card shows: ``processor(images=image, text=prompt)``,
    ``model(**inputs)``, ``post_process_instance_segmentation`` at the pipeline's
    threshold, masks upsampled to the image (for detect the masks are still computed
    by the model and post-processed: a naive user does not skip them). Returns the
    mean number of detections per image.
    """
    import torch

    del with_masks  # the naive user always gets masks
    model, processor = backend.model, backend.processor
    total = 0
    with torch.inference_mode():
        for path in paths:
            image = read_rgb(path)
            for name in classes:
                inputs = processor(images=image, text=name, return_tensors="pt")
                inputs = {
                    k: v.to(backend.device, backend.dtype)
                    if v.is_floating_point()
                    else v.to(backend.device)
                    for k, v in inputs.items()
                }
                outputs = model(**inputs)
                result = processor.post_process_instance_segmentation(
                    outputs,
                    threshold=threshold,
                    mask_threshold=0.5,
                    target_sizes=inputs["original_sizes"].tolist(),
                )[0]
                total += len(result["scores"])
    return total / max(len(paths), 1)


def _model_summary(backend: Any) -> dict[str, Any]:
    config = backend.model.config
    vit = config.vision_config.backbone_config
    return {
        "parameters_m": round(
            sum(p.numel() for p in backend.model.parameters()) / 1e6, 2
        ),
        "vit": f"dim {vit.hidden_size} layers {vit.num_hidden_layers} "
        f"input {vit.image_size}",
        "detr": f"dim {config.detr_encoder_config.hidden_size} "
        f"enc {config.detr_encoder_config.num_layers} "
        f"dec {config.detr_decoder_config.num_layers} "
        f"queries {config.detr_decoder_config.num_queries}",
    }


def _ratios(measurements: dict[str, Measurement]) -> tuple[dict[str, float], list]:
    """b/a and b/c (best repeat; median in brackets) against issue 16's targets."""
    a, b, c = (measurements[key] for key in "abc")
    ratios: dict[str, float] = {}
    lines = []
    for name, other, target in (
        ("b/a", a, TARGET_B_OVER_A),
        ("b/c", c, TARGET_B_OVER_C),
    ):
        best = b.best_ips / other.best_ips
        median = b.median_ips / other.median_ips
        ratios[name] = round(best, 3)
        ratios[f"{name}_median"] = round(median, 3)
        verdict = "met" if best >= target else "MISSED"
        lines.append(
            f"{name} = {best:.2f} (median {median:.2f}); target >= {target}: {verdict}"
        )
    return ratios, lines


if __name__ == "__main__":
    raise SystemExit(main())
