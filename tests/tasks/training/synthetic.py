"""Synthetic training data a tiny model learns on CPU in seconds: coloured squares on a
plain background with exact boxes, written as an ``autolabel label`` output folder
through the project's own label table and export functions; and tiny random bases
(RT-DETR, a ViT classifier) saved like real checkpoints.

A helper module, not a test module.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import supervision as sv
from PIL import Image, ImageDraw

from tasks.export_classification import write_class_table
from tasks.export_coco import write_coco
from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    ImageRecord,
    OutputLayout,
    detections_to_frame,
    images_to_frame,
    write_parquet_atomically,
)
from tasks.splits import Splits

COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220)}
CLASS_NAMES = list(COLOURS)
SIZE = 64
TRAIN_SPLIT = "train=0.75,val=0.25"


def draw_shapes(
    seed: int, size: int = SIZE
) -> tuple[Image.Image, list[tuple[str, tuple[int, ...]]]]:
    """One ``size`` x ``size`` image: 1-2 squares of random colour, size and place
    (not overlapping); each with its exact xyxy box."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for _ in range(rng.randint(1, 2)):
        side = rng.randint(size * 18 // 64, size * 28 // 64)
        for _attempt in range(20):
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x, y, x + side, y + side)
            if all(_apart(box, other) for _, other in shapes):
                break
        else:
            continue
        name = rng.choice(CLASS_NAMES)
        draw.rectangle([x, y, x + side - 1, y + side - 1], fill=COLOURS[name])
        shapes.append((name, box))
    return image, shapes


def _apart(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def write_images(
    folder: Path, count: int, first_seed: int = 0, size: int = SIZE
) -> dict[str, list]:
    """``count`` PNGs in ``folder``; their shapes by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for seed in range(first_seed, first_seed + count):
        image, shapes = draw_shapes(seed, size)
        name = f"shapes-{seed:04d}.png"
        image.save(folder / name)
        truth[name] = shapes
    return truth


def write_labeled_out(
    out: Path,
    count: int,
    *,
    task: str = "detect",
    run_id: str = "synthetic",
    size: int = SIZE,
) -> OutputLayout:
    """An output folder as ``autolabel label`` writes it, its labels the exact shapes
    (detect: one box per square; classify: the colour of the image's largest square,
    as one whole-image row), with the run's export (COCO or the class table)."""
    source = out.parent / f"{out.name}-images"
    truth = write_images(source, count, size=size)
    layout = OutputLayout(out)
    frames, records = [], []
    for name, shapes in truth.items():
        path = source / name
        record = ImageRecord(
            source_uri=str(path),
            relative_path=name,
            image_id=hashlib.sha256(path.read_bytes()).hexdigest(),
            width=size,
            height=size,
        )
        records.append(record)
        if task == "classify":
            largest = max(shapes, key=lambda shape: shape[1][2] - shape[1][0])
            shapes = [(largest[0], (0, 0, size, size))]
        detections = sv.Detections(
            xyxy=np.array([box for _, box in shapes], dtype=np.float32).reshape(-1, 4),
            confidence=np.ones(len(shapes), dtype=np.float32),
            class_id=np.array([CLASS_NAMES.index(n) for n, _ in shapes], dtype=int),
            data={
                "class_name": np.array([n for n, _ in shapes], dtype=str),
                "prompt": np.array([n for n, _ in shapes], dtype=str),
            },
        )
        frames.append(
            detections_to_frame(detections, record, model="synthetic", run_id=run_id)
        )
    import pandas as pd

    labels_path, images_path = layout.shard_paths("synthetic")
    write_parquet_atomically(pd.concat(frames), labels_path, LABEL_SCHEMA)
    write_parquet_atomically(
        images_to_frame(records, run_id=run_id), images_path, IMAGE_SCHEMA
    )
    if task == "classify":
        write_class_table(layout, CLASS_NAMES, Splits().with_val())
    else:
        write_coco(layout, CLASS_NAMES, Splits())
    return layout


def save_tiny_rt_detr(path: Path, *, image_size: int = SIZE) -> str:
    """A ~0.2 M parameter random RT-DETR with a processor at ``image_size``: a base
    for ``autolabel train`` (its own two classes get replaced)."""
    import torch
    from transformers import (
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
        RTDetrResNetConfig,
    )

    torch.manual_seed(0)
    config = RTDetrConfig(
        backbone_config=RTDetrResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 16, 32],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            out_features=["stage2", "stage3", "stage4"],
        ),
        encoder_hidden_dim=32,
        encoder_in_channels=[16, 16, 32],
        decoder_in_channels=[32, 32, 32],
        num_denoising=0,
        id2label={0: "thing", 1: "other"},
        label2id={"thing": 0, "other": 1},
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        use_pretrained_backbone=False,
    )
    RTDetrForObjectDetection(config).save_pretrained(path)
    RTDetrImageProcessor(
        size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return str(path)


def save_tiny_vit_classifier(path: Path) -> str:
    """A tiny random ViT image classifier with its processor at 32 px."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)
