"""How each kind of model is built, fed and measured while it trains.

A recipe knows the Auto class of its kind, how a batch of images and their labels
becomes the model's inputs (through the base's own image processor, so each
architecture resizes, normalises and encodes its targets its own way), and how the val
split is scored after an epoch: a detector by COCO mAP@0.5 and mAP@[.5:.95] (the
project's ``coco_average_precision``, pycocotools' COCOeval), a classifier by top-1
accuracy (``classification_metrics``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import pandas as pd
import torch
from PIL import Image

from tasks.evaluation_metrics import coco_average_precision
from tasks.training.data import Example

# Val images per forward pass when measuring (no gradients: more fit than in training).
_EVAL_BATCH = 16


def resized(size: dict, image_size: int | None) -> dict:
    """The processor's ``size`` for ``image_size`` pixels: both sides of a fixed-size
    input, or the longest edge (and at most the shortest) of an aspect-keeping one."""
    size = dict(size)
    if image_size is None:
        return size
    if "height" in size and "width" in size:
        return {"height": image_size, "width": image_size}
    if "longest_edge" in size:
        shortest = size.get("shortest_edge") or image_size
        return {"shortest_edge": min(shortest, image_size), "longest_edge": image_size}
    return {"shortest_edge": image_size}


def load_processor(base: str, image_size: int | None):
    """The base's image processor, at ``image_size`` when given (saved with the
    trained model, so labeling sees images as training did)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(base, trust_remote_code=False)
    if image_size is None:
        return processor
    overrides = {"size": resized(processor.size, image_size)}
    if getattr(processor, "crop_size", None):
        overrides["crop_size"] = {"height": image_size, "width": image_size}
    return AutoImageProcessor.from_pretrained(
        base, trust_remote_code=False, **overrides
    )


def _inputs(model: torch.nn.Module, encoded, device: torch.device) -> dict:
    """The processor's tensors the model's forward takes, on ``device``."""
    accepted = inspect.signature(model.forward).parameters
    return {
        name: encoded[name].to(device)
        for name in ("pixel_values", "pixel_mask")
        if name in encoded and name in accepted
    }


class DetectorRecipe:
    """An ``AutoModelForObjectDetection`` (RT-DETR, RT-DETRv2, D-FINE, DETR, ...)."""

    task = "detect"
    max_grad_norm = 0.1  # the DETR family's usual clip
    metric_names = ("map50", "map")

    @staticmethod
    def load_model(base: str, class_names: list[str]):
        return _load_with_class_head("AutoModelForObjectDetection", base, class_names)

    @staticmethod
    def collate(processor, images: Sequence[Image.Image], examples: Sequence[Example]):
        annotations = [
            {
                "image_id": n,
                "annotations": [
                    {
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "category_id": class_id,
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                    for (x0, y0, x1, y1), class_id in zip(
                        example.boxes, example.class_ids, strict=True
                    )
                ],
            }
            for n, example in enumerate(examples)
        ]
        return processor(
            images=list(images), annotations=annotations, return_tensors="pt"
        )

    @staticmethod
    def forward_loss(model, batch, device: torch.device) -> torch.Tensor:
        labels = [
            {key: value.to(device) for key, value in target.items()}
            for target in batch["labels"]
        ]
        return model(**_inputs(model, batch, device), labels=labels).loss

    @staticmethod
    def measure(
        model,
        processor,
        examples: Sequence[Example],
        class_names: list[str],
        load: Callable[[Example], Image.Image],
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> dict[str, float | None]:
        """mAP@0.5 and mAP@[.5:.95] of the model on ``examples`` (COCOeval)."""
        keys = [f"val-{n}" for n in range(len(examples))]
        truth = pd.DataFrame(
            [
                (key, class_names[c], *box)
                for key, example in zip(keys, examples, strict=True)
                for box, c in zip(example.boxes, example.class_ids, strict=True)
            ],
            columns=["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        )
        rows = []
        for start in range(0, len(examples), _EVAL_BATCH):
            chunk = examples[start : start + _EVAL_BATCH]
            images = [load(example) for example in chunk]
            encoded = processor(images=images, return_tensors="pt")
            with torch.inference_mode(), autocast():
                outputs = model(**_inputs(model, encoded, device))
            for key in ("logits", "pred_boxes"):
                outputs[key] = outputs[key].float()
            processed = processor.post_process_object_detection(
                outputs,
                threshold=0.0,
                target_sizes=[(image.height, image.width) for image in images],
            )
            for key, result in zip(keys[start:], processed, strict=False):
                for label, score, box in zip(
                    result["labels"].tolist(),
                    result["scores"].tolist(),
                    result["boxes"].tolist(),
                    strict=True,
                ):
                    rows.append((key, class_names[label], score, *box))
        predictions = pd.DataFrame(
            rows,
            columns=[
                "image_id",
                "class_name",
                "confidence",
                "x_min",
                "y_min",
                "x_max",
                "y_max",
            ],
        )
        sizes = {
            key: {"width": example.width, "height": example.height}
            for key, example in zip(keys, examples, strict=True)
        }
        ap, _ = coco_average_precision(
            predictions, truth, images=sizes, classes=class_names, iou_type="bbox"
        )
        map50, map_ = ap.get("", (None, None))
        return {"map50": map50, "map": map_}


class ClassifierRecipe:
    """An ``AutoModelForImageClassification`` (ViT, ConvNeXt, ResNet, timm, ...)."""

    task = "classify"
    max_grad_norm = 1.0
    metric_names = ("accuracy",)

    @staticmethod
    def load_model(base: str, class_names: list[str]):
        return _load_with_class_head(
            "AutoModelForImageClassification", base, class_names
        )

    @staticmethod
    def collate(processor, images: Sequence[Image.Image], examples: Sequence[Example]):
        encoded = processor(images=list(images), return_tensors="pt")
        encoded["labels"] = torch.tensor([example.class_ids[0] for example in examples])
        return encoded

    @staticmethod
    def forward_loss(model, batch, device: torch.device) -> torch.Tensor:
        return model(
            **_inputs(model, batch, device), labels=batch["labels"].to(device)
        ).loss

    @staticmethod
    def measure(
        model,
        processor,
        examples: Sequence[Example],
        class_names: list[str],
        load: Callable[[Example], Image.Image],
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> dict[str, float | None]:
        """Top-1 accuracy of the model on ``examples`` (the project's
        ``classification_metrics``, single-label)."""
        from tasks.evaluation_classification import classification_metrics

        keys = [f"val-{n}" for n in range(len(examples))]
        rows = []
        for start in range(0, len(examples), _EVAL_BATCH):
            chunk = examples[start : start + _EVAL_BATCH]
            encoded = processor(images=[load(e) for e in chunk], return_tensors="pt")
            with torch.inference_mode(), autocast():
                logits = model(**_inputs(model, encoded, device)).logits
            scores = logits.float().softmax(-1).cpu()
            best = scores.max(-1)
            for key, score, index in zip(
                keys[start:], best.values.tolist(), best.indices.tolist(), strict=False
            ):
                rows.append((key, class_names[index], score))
        predicted = pd.DataFrame(rows, columns=["image_id", "class_name", "confidence"])
        truth = pd.DataFrame(
            [
                (k, class_names[e.class_ids[0]])
                for k, e in zip(keys, examples, strict=True)
            ],
            columns=["image_id", "class_name"],
        )
        scores = classification_metrics(
            predicted,
            predicted,
            truth,
            image_ids=keys,
            classes=class_names,
            multi_label=False,
        )
        return {"accuracy": scores.accuracy}


def recipe_for(task: str) -> type[DetectorRecipe] | type[ClassifierRecipe]:
    """The recipe of a training data task (``detect`` or ``classify``)."""
    return ClassifierRecipe if task == "classify" else DetectorRecipe


def _load_with_class_head(auto_class: str, base: str, class_names: list[str]):
    """``base`` through transformers' ``auto_class``, its head sized for our classes;
    safe loading (no pickles, no remote code)."""
    import transformers

    return getattr(transformers, auto_class).from_pretrained(
        base, **_class_head(class_names), weights_only=True, trust_remote_code=False
    )


def _class_head(class_names: list[str]) -> dict:
    """from_pretrained arguments that give the model the ontology's classes (a new
    head where the base had others)."""
    return {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: n for n, name in enumerate(class_names)},
        "ignore_mismatched_sizes": True,
    }
