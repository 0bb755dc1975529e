"""Grounded SAM images/s: our path vs one SAM decoder call per box (Autodistill's way).

Both modes get the same Grounding DINO boxes (the top ``--boxes`` per image of the same
random model) and the same random SAM weights; only how SAM is driven differs:

(a) ours: ``GroundedSamModel.predict``: Grounding DINO, then SAM image embeddings in
    batches, then ALL boxes of an image through the mask decoder in one call;
(b) Autodistill (autodistill-grounded-sam / Grounded-Segment-Anything's ``segment``):
    per image ``SamPredictor.set_image``, then per box ``predictor.predict(box=...,
    multimask_output=True)`` and the best of its three masks;
(c) the same loop with ``multimask_output=False``: exactly our masks, one decoder call
    per box, so a/c isolates what batching the boxes buys.

Each is timed end to end (Grounding DINO included) and for its SAM stage alone. Default
sizes run in a few minutes on 2 CPU cores: the tiny Grounding DINO (its cost is the same
in every mode) and SAM ``vit_mid``: Meta's real 1024 px input, prompt encoder and mask
decoder, so decoder timings equal real SAM's, with a small encoder (``--sam-type vit_b``
for the real one, ~12 s per image on CPU).

    .venv/bin/python benchmarks/bench_grounded_sam.py
    .venv/bin/python benchmarks/bench_grounded_sam.py --images 2 --boxes 4 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=16, help="boxes per image")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sam-type", default="vit_mid", help="vit_mid, vit_b, ...")
    parser.add_argument("--dino-size", default="tiny", help="tiny, mid or full")
    parser.add_argument("--image-size", default="640x480", help="WxH of every image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


class TopBoxes:
    """Grounding DINO, keeping only each image's ``k`` highest-scoring boxes."""

    def __init__(self, dino, k: int) -> None:
        self.dino, self.k = dino, k

    def predict(self, images, ontology, *, confidence_floor):
        results = self.dino.predict(images, ontology, confidence_floor=confidence_floor)
        return [d[np.argsort(-d.confidence)[: self.k]] for d in results]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    import torch
    from PIL import Image
    from segment_anything import SamPredictor
    from transformers.utils import logging

    from model_loaders.cache import get_model
    from model_loaders.grounded_sam import GroundedSamModel, load_sam
    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec
    from model_loaders.random_init import save_random_grounding_dino
    from model_loaders.random_init_sam_clip import save_random_sam

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    width, height = (int(v) for v in args.image_size.split("x"))
    images = _photos(args.images, (width, height), Image)
    ontology = Ontology.from_class_options(["person", "cat", "rocket", "cup", "dog"])

    with tempfile.TemporaryDirectory(prefix="gsam-bench-") as scratch:
        dino_dir = save_random_grounding_dino(Path(scratch) / "dino", args.dino_size)
        sam_file = save_random_sam(Path(scratch) / "sam.pth", args.sam_type)
        spec = ModelSpec(
            task="segment",
            model=str(dino_dir),
            sam_checkpoint=str(sam_file),
            sam_model_type=args.sam_type,
            device=args.device,
            batch_size=args.batch_size,
        )
        started = time.perf_counter()
        loaded = get_model(spec)
        load_s = time.perf_counter() - started
        boxes = TopBoxes(loaded.boxes, args.boxes)
        ours = GroundedSamModel(boxes, loaded.sam, spec, loaded.device)
        sam = load_sam(args.sam_type, str(sam_file)).to(loaded.device)
        predictor = SamPredictor(sam)

    def dino() -> list:
        return boxes.predict(images, ontology, confidence_floor=0.0)

    def run_ours(batch: list = images) -> float:
        started = time.perf_counter()
        ours.predict(batch, ontology, confidence_floor=0.0)
        return time.perf_counter() - started

    def run_loop(multimask: bool, batch: list = images) -> float:
        started = time.perf_counter()
        found = boxes.predict(batch, ontology, confidence_floor=0.0)
        for image, detections in zip(batch, found, strict=True):
            predictor.set_image(np.asarray(image))
            for box in detections.xyxy:
                masks, scores, _ = predictor.predict(
                    box=box, multimask_output=multimask
                )
                _ = masks[int(np.argmax(scores))]
        return time.perf_counter() - started

    def run_dino() -> float:
        started = time.perf_counter()
        dino()
        return time.perf_counter() - started

    modes = {
        "a ours (batched decoder)": run_ours,
        "b autodistill loop (multimask)": lambda: run_loop(True),
        "c per-box loop (single mask)": lambda: run_loop(False),
        "grounding dino alone": run_dino,
    }
    with torch.inference_mode():
        run_ours(images[:1]), run_loop(True, images[:1])  # warm-up, untimed
        components = _components(ours, predictor, images[0], dino()[0].xyxy)
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.repeats):  # interleaved, so background load hits all
            for name, run in modes.items():
                times[name].append(run())
        cpu_share = (time.process_time() - cpu_before) / (
            time.perf_counter() - wall_before
        )

    best = {name: min(values) for name, values in times.items()}
    dino_s = best["grounding dino alone"]
    n = len(images)
    print(
        f"\nGrounded SAM benchmark: {n} images {width}x{height}, {args.boxes} boxes "
        f"each, SAM {args.sam_type}, Grounding DINO {args.dino_size}, batch "
        f"{args.batch_size}, {args.repeats} repeats, device {loaded.device}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.2f}, "
        f"process CPU/wall {cpu_share:.2f}; model load {load_s:.1f} s"
    )
    print("\nSAM components, one image (best of 3):")
    for name, seconds in components.items():
        print(f"  {name:48} {seconds:8.3f} s")
    batched = components["decoder, all boxes in one call"]
    single = components["decoder, one call per box (single mask)"]
    print(
        f"  decoder: one call for {args.boxes} boxes is {single / batched:.2f}x "
        "faster than one call per box"
    )
    print(
        f"\n{'mode':34} {'best s':>8} {'median s':>9} {'images/s':>9} "
        f"{'SAM stage s/img':>16}"
    )
    for name, values in times.items():
        sam_stage = (
            ""
            if name.startswith("grounding")
            else f"{(min(values) - dino_s) / n:16.3f}"
        )
        print(
            f"{name:34} {min(values):8.2f} {statistics.median(values):9.2f} "
            f"{n / min(values):9.3f} {sam_stage}"
        )
    a = best["a ours (batched decoder)"]
    b = best["b autodistill loop (multimask)"]
    c = best["c per-box loop (single mask)"]
    print(f"\nimages/s ratio a/b (ours vs Autodistill's loop): {b / a:.2f}x")
    print(f"images/s ratio a/c (batched vs per-box decoder, same masks): {c / a:.2f}x")
    print(
        f"SAM stage ratio b/a: {(b - dino_s) / max(a - dino_s, 1e-9):.2f}x, "
        f"c/a: {(c - dino_s) / max(a - dino_s, 1e-9):.2f}x"
    )
    return 0


def _components(ours, predictor, image, xyxy: np.ndarray) -> dict[str, float]:
    """Encoder and decoder alone on one image: best of 3, variants interleaved."""
    embedding, (input_size,) = ours.embed([image])
    original = (image.height, image.width)
    predictor.set_image(np.asarray(image))

    def per_box(multimask: bool) -> None:
        for box in xyxy:
            predictor.predict(box=box, multimask_output=multimask)

    variants = {
        "encoder (one image)": lambda: ours.embed([image]),
        "decoder, all boxes in one call": lambda: ours.decode(
            embedding, xyxy, input_size=input_size, original_size=original
        ),
        "decoder, one call per box (single mask)": lambda: per_box(False),
        "decoder, one call per box (multimask, Autodistill)": lambda: per_box(True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def _photos(count: int, size: tuple[int, int], image_module) -> list:
    import skimage.data

    photos = []
    for index in range(count):
        pixels = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
        photo = image_module.fromarray(pixels).convert("RGB").resize(size)
        photos.append(photo)
    return photos


if __name__ == "__main__":
    raise SystemExit(main())
