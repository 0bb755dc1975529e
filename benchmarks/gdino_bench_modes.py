"""What the three timed modes run: (a) raw forward, (b) pipeline, (c) naive loop."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gdino_bench_images import read_rgb
from PIL import Image

# Autodistill's Grounding DINO defaults, used by the naive loop (c).
NAIVE_BOX_THRESHOLD = 0.35
NAIVE_TEXT_THRESHOLD = 0.25


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


def run_label_chunk(
    folder: Path, settings: Any, scratch: Path, *, decode_ahead: bool = True
) -> float:
    """Mode (b): plan the folder's chunks and label each into a fresh output folder.

    The plain functions behind the Prefect tasks, so no Prefect server is involved,
    chained as the labeling flow chains them (each chunk decodes the next one's first
    images, unless ``decode_ahead`` is off). A fresh output folder every time, because
    label_chunk reuses a finished shard instead of labeling again. Returns the mean
    number of labels per image.
    """
    from tasks.decode_ahead import DecodeAhead
    from tasks.label import each_with_next, label_chunk, plan_chunks

    out = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    try:
        chunks = plan_chunks(str(folder), settings)
        with DecodeAhead(out) as ahead:
            results = [
                label_chunk(
                    chunk,
                    settings,
                    str(out),
                    run_id="bench",
                    decode_ahead=ahead if decode_ahead else None,
                    next_chunk=next_chunk,
                )
                for chunk, next_chunk in each_with_next(chunks)
            ]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    skipped = [item for result in results for item in result.skipped]
    if skipped:  # a pipeline that skips images is fast for the wrong reason
        path, reason = skipped[0]
        raise RuntimeError(f"(b) skipped {len(skipped)} image(s): {path}: {reason}")
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
