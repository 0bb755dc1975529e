"""An image classifier the user trained (``autolabel train`` on classification labels,
or any Hugging Face ``AutoModelForImageClassification`` folder) as the labeler.

Its image processor prepares the images; the class scores are the softmax over the
model's classes (``config.id2label``), mapped onto the ontology as the trained detector
maps its classes (same name, or ``--map model_name=class``; others dropped). Rows have
the protocol's classification shape, the whole image as box: ``classify`` keeps the
top-1 mapped class, ``classify-multi`` every mapped class with its own softmax share.

Safety as for the trained detector: safetensors or ``weights_only`` loading, no remote
code. Only images of the same resized shape share a batch.
"""

from __future__ import annotations

import numpy as np
import supervision as sv
import torch

from model_loaders.batching import PreparedImage
from model_loaders.class_mapping import ClassMapping
from model_loaders.protocol import ModelSpec
from model_loaders.trained import TrainedDetector


class TrainedClassifier(TrainedDetector):
    """A closed-set Hugging Face image classifier; see the module docstring.

    Loading, class mapping and same-shape batching are the trained detector's; only
    the auto class and the forward pass (class scores, not boxes) differ.
    """

    auto_model_class = "AutoModelForImageClassification"
    what = "image classifier"

    @classmethod
    def check_processor(cls, spec: ModelSpec, processor) -> None:
        """Any image processor will do: the scores are the model's own softmax."""

    @property
    def top_1(self) -> bool:
        return self.spec.task != "classify-multi"

    def _forward(
        self,
        images: list[PreparedImage],
        mapping: ClassMapping,
        confidence_floor: float,
    ) -> list[sv.Detections]:
        return [
            self._detections(image, scores, mapping, confidence_floor)
            for image, scores in zip(images, self._scores(images), strict=True)
        ]

    @torch.inference_mode()
    def _scores(self, images: list[PreparedImage]) -> np.ndarray:
        pixel_values = torch.stack([image.pixel_values for image in images])
        logits = self.model(pixel_values=pixel_values.to(self.device, self.dtype))
        return logits.logits.float().softmax(-1).cpu().numpy()

    def _detections(
        self,
        image: PreparedImage,
        scores: np.ndarray,
        mapping: ClassMapping,
        confidence_floor: float,
    ) -> sv.Detections:
        mapped = np.array(
            [mapping.class_id(name) is not None for name in self.class_names]
        )
        order = [int(i) for i in np.argsort(-scores, kind="stable") if mapped[i]]
        chosen = order[:1] if self.top_1 else order
        whole = np.array([0, 0, image.width, image.height], dtype=np.float32)
        return mapping.to_detections(
            xyxy=np.tile(whole, (len(chosen), 1)),
            confidence=scores[chosen],
            model_names=[self.class_names[i] for i in chosen],
            resolution_wh=(image.width, image.height),
            confidence_floor=confidence_floor,
        )
