"""Grounding DINO (transformers) as a labeling backend; MM Grounding DINO and LLMDet,
the same architecture retrained, through the same code (``MMGroundingDinoModel``).

What makes it fast and correct:
- one forward pass covers all classes (joint prompt), split into several texts only when
  the class list exceeds the model's token limit;
- images are batched, but only with images of the same resized shape: Grounding DINO's
  output changes when an image is padded to share a batch with a bigger one, and a label
  must never depend on which images happened to share a batch;
- scores are read per description from the token logits (see
  ``grounding_dino_prompts``), so each detection belongs to exactly one ontology class;
- an image the processor cannot resize (a 10000x10 strip) is named, with the reason,
  in an ``UnusableImagesError`` before any forward pass, so the caller skips it and
  labels the rest (``tasks.label.predict_usable``).
"""

from __future__ import annotations

import numpy as np
import supervision as sv
import torch

from model_loaders.batching import PreparedImage, prepare_images, same_shape_batches
from model_loaders.grounding_dino_prompts import (
    PromptText,
    build_joint_texts,
    build_per_class_texts,
    phrase_scores,
    phrase_token_mask,
)
from model_loaders.hub import load_pretrained
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelSpec, Predictions


class GroundingDinoModel:
    """Zero-shot detection with Grounding DINO; see the module docstring."""

    # What is loaded: the transformers class, and the model's name in messages.
    model_class = "GroundingDinoForObjectDetection"
    what = "Grounding DINO"

    def __init__(self, model, processor, spec: ModelSpec, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.spec = spec
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.max_text_len = int(model.config.max_text_len)
        self._texts: dict[tuple[Ontology, str], list[PromptText]] = {}

    @classmethod
    def load(cls, spec: ModelSpec) -> GroundingDinoModel:
        """Load processor and weights from a Hugging Face id or a local directory."""
        import transformers

        model_class = getattr(transformers, cls.model_class)
        processor, model, device = load_pretrained(
            spec,
            what=cls.what,
            load=lambda dtype: (
                transformers.AutoProcessor.from_pretrained(spec.model),
                model_class.from_pretrained(spec.model, dtype=dtype),
            ),
        )
        return cls(model, processor, spec, device)

    def texts_for(self, ontology: Ontology) -> list[PromptText]:
        """The prompt texts for an ontology in this model's prompt mode (built once)."""
        key = (ontology, self.spec.options.prompt_mode)
        if key not in self._texts:
            prompts = ontology.prompts()
            if self.spec.options.prompt_mode == "per-class":
                self._texts[key] = build_per_class_texts(prompts)
            else:
                self._texts[key] = build_joint_texts(
                    prompts,
                    count_tokens=self._count_tokens,
                    max_tokens=self.max_text_len,
                )
        return self._texts[key]

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        texts = self.texts_for(ontology)
        prepared = prepare_images(images, self.processor.image_processor)
        per_image: list[list[sv.Detections]] = [[] for _ in images]
        for batch in self._batches(prepared, len(texts)):
            batch_texts = [texts[text_index] for _, text_index in batch]
            detections = self._forward(
                [image for image, _ in batch],
                batch_texts,
                confidence_floor,
                ontology.class_names,
            )
            for (image, _), image_detections in zip(batch, detections, strict=True):
                per_image[image.index].append(image_detections)
        return [_merged(parts) for parts in per_image]

    def _batches(
        self, prepared: list[PreparedImage], n_texts: int
    ) -> list[list[tuple[PreparedImage, int]]]:
        """(image, text) pairs of same-shape images, cut into batches: no padding."""
        pairs = [(image, text) for image in prepared for text in range(n_texts)]
        return same_shape_batches(
            pairs, shape=lambda pair: pair[0].shape, batch_size=self.spec.batch_size
        )

    @torch.inference_mode()
    def _forward(
        self,
        images: list[PreparedImage],
        texts: list[PromptText],
        confidence_floor: float,
        class_names: list[str],
    ) -> list[sv.Detections]:
        from transformers.image_transforms import center_to_corners_format

        tokens = self.processor.tokenizer(
            [t.text for t in texts],
            padding="longest",
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = tokens.pop("offset_mapping").tolist()
        pixel_values = torch.stack([image.pixel_values for image in images])
        outputs = self.model(
            pixel_values=pixel_values.to(self.device, self.dtype),
            pixel_mask=torch.ones(
                pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long
            ).to(self.device),
            **{name: value.to(self.device) for name, value in tokens.items()},
        )
        probs = outputs.logits.float().sigmoid()
        boxes = center_to_corners_format(outputs.pred_boxes.float())
        length = tokens["input_ids"].shape[1]
        results = []
        for row, (image, text) in enumerate(zip(images, texts, strict=True)):
            mask = phrase_token_mask(offsets[row], text.phrases, length)
            scores = phrase_scores(probs[row], mask)  # (queries, phrases)
            confidence, phrase_index = scores.max(dim=1)
            keep = confidence >= confidence_floor
            scale = torch.tensor(
                [image.width, image.height, image.width, image.height],
                device=boxes.device,
            )
            # Boxes may reach past the border; labels live inside the image.
            xyxy = sv.clip_boxes(
                (boxes[row][keep] * scale).cpu().numpy(),
                resolution_wh=(image.width, image.height),
            )
            chosen = [text.phrases[i] for i in phrase_index[keep].tolist()]
            results.append(
                sv.Detections(
                    xyxy=xyxy.astype(np.float32).reshape(-1, 4),
                    confidence=confidence[keep].cpu().numpy().astype(np.float32),
                    class_id=np.array([p.class_id for p in chosen], dtype=int),
                    data={
                        "class_name": np.array(
                            [class_names[p.class_id] for p in chosen], dtype=str
                        ),
                        "prompt": np.array([p.prompt for p in chosen], dtype=str),
                    },
                )
            )
        return results

    def _count_tokens(self, piece: str) -> int:
        return len(
            self.processor.tokenizer(piece, add_special_tokens=False)["input_ids"]
        )


def _merged(parts: list[sv.Detections]) -> sv.Detections:
    """One image's detections of every text; an empty result still names its
    ``class_name`` and ``prompt`` columns (merging empty parts drops them)."""
    merged = sv.Detections.merge(parts)
    if len(merged) == 0:
        merged.data = {
            "class_name": np.array([], dtype=str),
            "prompt": np.array([], dtype=str),
        }
    return merged


class MMGroundingDinoModel(GroundingDinoModel):
    """MM Grounding DINO and LLMDet (``MMGroundingDinoForObjectDetection``): Grounding
    DINO's architecture and prompts, retrained by OpenMMLab on more data; everything
    above holds as is (same processor, tokenizer, token limit and outputs)."""

    model_class = "MMGroundingDinoForObjectDetection"
    what = "MM Grounding DINO"
