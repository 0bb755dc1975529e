"""Shared pieces of the Grounding DINO throughput benchmarks (CPU and GPU scripts).

Imports only torch, transformers, PIL and numpy at the top, because the GPU script must
run on a lent machine where this repo's other dependencies (prefect, supervision,
pyarrow, ...) may be missing; ``tasks`` is imported only inside ``run_label_chunk``,
which the GPU script calls only where it imports. Both scripts time the raw forward
(a), the pipeline (b) and the naive per-class loop (c) with this one copy of the code,
so their ratios compare across machines.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

# Real photos that ship inside scikit-image (no download); grayscale ones become RGB.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "coins",
    "clock",
    "grass",
    "gravel",
    "brick",
)

# Single words of the random models' vocabulary, so each class is one token there too.
CLASS_WORDS = (
    "person",
    "cat",
    "dog",
    "car",
    "rocket",
    "cup",
    "bird",
    "horse",
    "bicycle",
    "bottle",
    "chair",
    "table",
    "tree",
    "flower",
    "bus",
    "truck",
    "ball",
    "fish",
    "plate",
    "window",
)

# Autodistill's Grounding DINO defaults, used by the naive loop (c).
NAIVE_BOX_THRESHOLD = 0.35
NAIVE_TEXT_THRESHOLD = 0.25


def put_repo_on_path() -> None:
    """Make ``model_loaders`` (and ``tasks``) importable without installing the repo.

    A lent GPU machine gets a copy of the working tree, not an installed package.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480), width first like PIL."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def class_names(count: int) -> list[str]:
    """The first ``count`` benchmark classes."""
    if not 1 <= count <= len(CLASS_WORDS):
        raise ValueError(f"--classes must be between 1 and {len(CLASS_WORDS)}")
    return list(CLASS_WORDS[:count])


def sample_images(
    count: int, size_wh: tuple[int, int]
) -> tuple[list[Image.Image], str]:
    """``count`` RGB images, all resized to ``size_wh``, and where they came from.

    One common size because the backend batches only images of the same resized shape;
    with mixed sizes the pipeline would run smaller batches than the raw forward it is
    compared with. Real scikit-image photos when installed (cycled, mirrored on the
    second pass so no two files are identical), else smooth synthetic images that
    compress like photos.
    """
    try:
        import skimage.data
    except ImportError:
        return _synthetic_images(count, size_wh), "synthetic (scikit-image missing)"
    images = []
    for index in range(count):
        name = SKIMAGE_PHOTOS[index % len(SKIMAGE_PHOTOS)]
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        if (index // len(SKIMAGE_PHOTOS)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        images.append(image.resize(size_wh, Image.Resampling.BILINEAR))
    return images, "scikit-image photos"


def _synthetic_images(count: int, size_wh: tuple[int, int]) -> list[Image.Image]:
    """Upsampled low-resolution noise plus grain: decodes and resizes like a photo."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize(size_wh, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 8, size=(size_wh[1], size_wh[0], 3))
        pixels = np.clip(np.asarray(smooth, dtype=np.float64) + grain, 0, 255)
        images.append(Image.fromarray(pixels.astype(np.uint8)))
    return images


def write_jpegs(images: Sequence[Image.Image], folder: Path) -> list[Path]:
    """Save as JPEG (quality 90): the files the pipeline and the naive loop decode."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"image-{index:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def read_rgb(path: Path) -> Image.Image:
    """Decode one file to RGB, as every mode does before preprocessing."""
    with Image.open(path) as opened:
        return opened.convert("RGB")


def model_summary(model: Any, processor: Any) -> dict[str, Any]:
    """The architecture facts a reader needs to compare figures between runs."""
    config = model.config
    backbone = config.backbone_config
    text = config.text_config
    size = processor.image_processor.size
    size_items = vars(size).items() if hasattr(size, "__dict__") else dict(size).items()
    return {
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "backbone": f"Swin dim {backbone.embed_dim} depths {list(backbone.depths)}",
        "text_encoder": f"BERT dim {text.hidden_size} layers {text.num_hidden_layers}",
        "d_model": config.d_model,
        "queries": config.num_queries,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "max_text_len": config.max_text_len,
        "processor_resize": {k: v for k, v in size_items if v is not None},
    }


def environment(device: Any) -> dict[str, Any]:
    """Versions, threads, load and accelerator, printed beside every figure."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if getattr(device, "type", str(device)) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


@dataclass
class Measurement:
    """Repeated timings of one mode.

    ``cpu_utils`` is process CPU time / wall time: about the thread count on an idle
    machine, lower when other processes take the cores, so a noisy figure shows as such.
    """

    mode: str
    images: int
    walls: list[float] = field(default_factory=list)
    cpu_utils: list[float] = field(default_factory=list)
    detections_per_image: float | None = None

    def add(self, wall: float, cpu_util: float) -> None:
        self.walls.append(wall)
        self.cpu_utils.append(cpu_util)

    @property
    def best_wall(self) -> float:
        return min(self.walls)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def best_ips(self) -> float:
        return self.images / self.best_wall

    @property
    def median_ips(self) -> float:
        return self.images / self.median_wall

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "images": self.images,
            "walls_s": [round(w, 4) for w in self.walls],
            "cpu_utils": [round(u, 2) for u in self.cpu_utils],
            "images_per_s_best": round(self.best_ips, 4),
            "images_per_s_median": round(self.median_ips, 4),
            "detections_per_image": self.detections_per_image,
        }


def timed(run: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, float, Any]:
    """Wall seconds, CPU utilisation and result of ``run``; ``sync`` awaits the GPU."""
    sync()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = run()
    sync()
    wall = time.perf_counter() - wall0
    return wall, (time.process_time() - cpu0) / wall, result


def device_sync(device: Any) -> Callable[[], None]:
    """A function that waits for queued GPU work, or does nothing on CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def prepare_raw_batches(
    processor: Any,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    *,
    batch_size: int,
    device: Any,
    dtype: Any,
) -> list[dict[str, Any]]:
    """Processor outputs of every (text, batch of images), already on the device.

    Built before timing so that (a) measures ``model(**inputs)`` alone. One entry per
    text and batch, like the backend does when a class list needs several texts. Image
    processor and tokenizer are called separately, as the backend does: given a list
    of texts that do not end in '.', ``GroundingDinoProcessor`` merges them into one
    image's label list (``["cat", "dog"]`` -> ``"cat. dog."``, batch 1).
    """
    batches = []
    for text in texts:
        for start in range(0, len(images), batch_size):
            part = list(images[start : start + batch_size])
            inputs = dict(processor.image_processor(images=part, return_tensors="pt"))
            inputs.update(
                processor.tokenizer(
                    [text] * len(part), padding="longest", return_tensors="pt"
                )
            )
            batches.append(_to_device(inputs, device, dtype))
    return batches


def _to_device(inputs: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    """Floating tensors to the model's dtype, integer ones (ids, masks) as they are."""
    return {
        name: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for name, value in inputs.items()
    }


def run_raw_forward(model: Any, batches: Sequence[dict[str, Any]]) -> None:
    """Mode (a): the batched forward passes and nothing else."""
    import torch

    with torch.inference_mode():
        for inputs in batches:
            model(**inputs)


def run_label_chunk(folder: Path, settings: Any, scratch: Path) -> float:
    """Mode (b): plan the folder's chunks and label each into a fresh output folder.

    The plain functions behind the Prefect tasks, so no Prefect server is involved. A
    fresh output folder every time, because label_chunk reuses a finished shard instead
    of labeling again. Returns the mean number of labels per image.
    """
    from tasks.label import label_chunk, plan_chunks

    out = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    try:
        chunks = plan_chunks(str(folder), settings)
        results = [label_chunk(c, settings, str(out), run_id="bench") for c in chunks]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    images = sum(r.images for r in results)
    return sum(r.labels for r in results) / max(images, 1)


def run_naive_loop(
    model: Any,
    processor: Any,
    paths: Sequence[Path],
    classes: Sequence[str],
    *,
    device: Any,
    dtype: Any,
) -> float:
    """Mode (c), how Autodistill labels: one forward per class per image.

    For each file: decode, then for each class ``processor(images=img, text=class)``,
    the model, and ``post_process_grounded_object_detection``; per-class results are
    then concatenated. Returns the mean number of detections per image.
    """
    import torch

    total = 0
    with torch.inference_mode():
        for path in paths:
            image = read_rgb(path)
            parts = [
                _naive_one_class(model, processor, image, name, class_id, device, dtype)
                for class_id, name in enumerate(classes)
            ]
            total += len(np.concatenate(parts))
    return total / max(len(paths), 1)


def _naive_one_class(
    model: Any,
    processor: Any,
    image: Image.Image,
    name: str,
    class_id: int,
    device: Any,
    dtype: Any,
) -> np.ndarray:
    """Rows (x0, y0, x1, y1, score, class_id) of one class on one image."""
    inputs = processor(images=image, text=name, return_tensors="pt")
    inputs = _to_device(dict(inputs), device, dtype)
    outputs = model(**inputs)
    # Post-processing in float32 whatever the model ran in (bf16 boxes lose pixels).
    outputs.logits = outputs.logits.float()
    outputs.pred_boxes = outputs.pred_boxes.float()
    result = processor.post_process_grounded_object_detection(
        outputs,
        input_ids=inputs["input_ids"],
        threshold=NAIVE_BOX_THRESHOLD,
        text_threshold=NAIVE_TEXT_THRESHOLD,
        target_sizes=[(image.height, image.width)],
    )[0]
    boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
    scores = result["scores"].float().cpu().numpy().reshape(-1, 1)
    ids = np.full_like(scores, class_id)
    return np.concatenate([boxes, scores, ids], axis=1)


MODE_NAMES = {
    "a": "(a) raw batched forward",
    "b": "(b) full pipeline",
    "c": "(c) naive per-class loop",
}


def time_modes(
    modes: dict[str, tuple[int, Callable[[], Any]]],
    *,
    repeats: int,
    sync: Callable[[], None],
    deadline: float | None = None,
    label: str = "",
) -> dict[str, Measurement]:
    """Time each mode ``repeats`` times; ``modes`` maps a key to (images, run).

    Each repeat runs every mode in turn, so background load hits all modes alike. Past
    ``deadline`` (a ``time.perf_counter`` value) no further repeat starts, but every
    mode keeps at least one timing.
    """
    measurements = {
        key: Measurement(MODE_NAMES.get(key, key), images)
        for key, (images, _) in modes.items()
    }
    for repeat in range(repeats):
        if repeat and deadline is not None and time.perf_counter() > deadline:
            print(f"  {label}time budget reached: {repeat} repeat(s) only", flush=True)
            break
        for key, (_, run) in modes.items():
            wall, util, result = timed(run, sync)
            measurements[key].add(wall, util)
            if isinstance(result, float):
                measurements[key].detections_per_image = round(result, 1)
            print(
                f"  {label}repeat {repeat + 1}/{repeats} {key}: {wall:7.2f} s, "
                f"cpu util {util:.2f}, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    return measurements


def ratio_lines(
    raw: Measurement | None,
    pipeline: Measurement | None,
    naive: Measurement | None,
    n_classes: int,
) -> tuple[dict[str, float], list[str]]:
    """b/a and b/c (best of the repeats, median in brackets) against the targets.

    Targets from the issue: b/a >= 0.9 (the pipeline keeps the model busy) and
    b/c >= classes x 0.8 (one joint pass instead of one pass per class).
    """
    ratios: dict[str, float] = {}
    lines = []
    targets = (("b/a", raw, 0.9), ("b/c", naive, n_classes * 0.8))
    for name, other, target in targets:
        if pipeline is None or other is None:
            lines.append(f"{name}: not measured")
            continue
        best = pipeline.best_ips / other.best_ips
        median = pipeline.median_ips / other.median_ips
        ratios[name] = round(best, 3)
        ratios[f"{name}_median"] = round(median, 3)
        verdict = "met" if best >= target else "MISSED"
        lines.append(
            f"{name} = {best:.2f} (median {median:.2f}); "
            f"target >= {target:.2f}: {verdict}"
        )
    return ratios, lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (Markdown-compatible), numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        padded = [
            value.rjust(width) if _is_number(value) else value.ljust(width)
            for value, width in zip(row, widths, strict=True)
        ]
        lines.append("| " + " | ".join(padded) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.1f}"
    return "-" if value is None else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
