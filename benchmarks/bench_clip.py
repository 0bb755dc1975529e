"""CLIP classification images/s: prompts encoded once per run vs for every image.

(a) ours: ``ClipModel.predict`` over all images: the class prompts go through the text
    tower once (then kept), images through the image tower in batches;
(b) naive: for every image, tokenize and encode all class prompts again, then encode
    that one image (what a per-image ``classify(image, classes)`` helper does);
(c) ours, one image per call: text kept, images not batched (a/c shows what image
    batching buys, b/c what encoding the prompts once buys).

Weights are random (nothing can be downloaded here), in open_clip's own ViT-B-32
architecture by default (``--size mid`` or ``tiny`` for smaller ones), saved as a
``local-dir:`` folder and loaded through the backend's real code path. Labels of the
modes are checked to agree.

    .venv/bin/python benchmarks/bench_clip.py
    .venv/bin/python benchmarks/bench_clip.py --images 8 --classes 10 --repeats 1
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
WORDS = (
    "person", "cat", "dog", "car", "rocket", "cup", "bird", "horse", "tree",
    "flower", "chair", "table", "window", "door", "sky", "cloud", "face", "hand",
    "ball", "fish", "plate", "food", "bottle", "truck", "bus", "bicycle", "boat",
    "clock", "coin", "moon",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", default="ViT-B-32", help="ViT-B-32, mid or tiny")
    parser.add_argument("--task", default="classify", help="classify, classify-multi")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    import torch
    from PIL import Image

    from model_loaders.clip import NEGATIVE_DESCRIPTION, ClipModel
    from model_loaders.ontology import Ontology
    from model_loaders.protocol import ModelSpec
    from model_loaders.random_init_sam_clip import save_random_open_clip

    images = _photos(args.images, Image)
    ontology = Ontology.from_class_options(list(WORDS[: args.classes]))
    with tempfile.TemporaryDirectory(prefix="clip-bench-") as scratch:
        folder = save_random_open_clip(Path(scratch) / "clip", args.size)
        spec = ModelSpec(
            task=args.task,
            model=f"local-dir:{folder}",
            device=args.device,
            batch_size=args.batch_size,
        )
        started = time.perf_counter()
        backend = ClipModel.load(spec)
        load_s = time.perf_counter() - started

    template = spec.options.prompt_template
    texts = [template.format(d) for d, _ in ontology.prompts()]
    texts.append(template.format(NEGATIVE_DESCRIPTION))

    def run_ours() -> tuple[float, list]:
        backend._prompts.clear()  # a new run: its prompts are encoded once, in here
        started = time.perf_counter()
        results = backend.predict(images, ontology, confidence_floor=0.0)
        return time.perf_counter() - started, results

    def run_naive() -> tuple[float, list]:
        started = time.perf_counter()
        results = []
        for image in images:
            backend._prompts.clear()  # re-encode every prompt for this image
            results += backend.predict([image], ontology, confidence_floor=0.0)
        return time.perf_counter() - started, results

    def run_unbatched() -> tuple[float, list]:
        backend._prompts.clear()
        started = time.perf_counter()
        results = []
        for image in images:
            results += backend.predict([image], ontology, confidence_floor=0.0)
        return time.perf_counter() - started, results

    modes = {
        "a ours (text once, images batched)": run_ours,
        "b naive (prompts re-encoded per image)": run_naive,
        "c ours, one image per call": run_unbatched,
    }
    with torch.inference_mode():
        for run in modes.values():  # warm-up, untimed
            run()
        started = time.perf_counter()
        backend.model.encode_text(backend.tokenizer(texts).to(backend.device))
        text_s = time.perf_counter() - started
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        times: dict[str, list[float]] = {name: [] for name in modes}
        labels: dict[str, list] = {}
        for _ in range(args.repeats):  # interleaved, so background load hits all
            for name, run in modes.items():
                seconds, labels[name] = run()
                times[name].append(seconds)
        cpu_share = (time.process_time() - cpu_before) / (
            time.perf_counter() - wall_before
        )
    reference = labels["a ours (text once, images batched)"]
    for name, results in labels.items():
        for ours, other in zip(reference, results, strict=True):
            assert ours.class_id.tolist() == other.class_id.tolist(), name
            np.testing.assert_allclose(ours.confidence, other.confidence, atol=1e-4)

    n = len(images)
    print(
        f"\nCLIP benchmark: {n} images, {args.classes} classes ({len(texts)} prompts "
        f"with the negative one), open_clip {args.size} (random weights), task "
        f"{args.task}, batch {args.batch_size}, {args.repeats} repeats, device "
        f"{backend.device}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}, {torch.get_num_threads()} threads, load "
        f"avg {os.getloadavg()[0]:.2f}, process CPU/wall {cpu_share:.2f}; model load "
        f"{load_s:.1f} s; text tower for all prompts once: {text_s:.3f} s"
    )
    print(f"\n{'mode':40} {'best s':>8} {'median s':>9} {'images/s':>9}")
    for name, values in times.items():
        print(
            f"{name:40} {min(values):8.2f} {statistics.median(values):9.2f} "
            f"{n / min(values):9.2f}"
        )
    a, b, c = (min(times[name]) for name in modes)
    print(f"\nimages/s ratio a/b (ours vs prompts re-encoded per image): {b / a:.2f}x")
    print(f"images/s ratio c/b (encoding the prompts once, alone): {b / c:.2f}x")
    print(f"images/s ratio a/c (batching the images, alone): {c / a:.2f}x")
    print("labels of all modes agree")
    return 0


def _photos(count: int, image_module) -> list:
    import skimage.data

    photos = []
    for index in range(count):
        pixels = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
        photos.append(image_module.fromarray(pixels).convert("RGB"))
    return photos


if __name__ == "__main__":
    raise SystemExit(main())
