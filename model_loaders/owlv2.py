"""OWLv2 (transformers ``Owlv2ForObjectDetection``) as a labeling backend.

OWLv2 scores every one of its image patches (3600 for the real 960 px model) against
every text query at once, and its boxes come from the image alone. What makes it fast
and correct:
- the descriptions of the ontology are embedded once per ontology, in one text encoder
  call, and kept on the instance (``get_text_features``);
- each image goes through the vision encoder once, in batches of ``batch_size`` images
  (``image_embedder``), and its patches are scored against all descriptions in one
  step (``class_predictor``): one image pass per image, whatever the class count;
- every image is padded to a square and resized to the model's input size by its
  processor, so batching never pads further and never changes a label;
- one class per detection: a box belongs to its best-scoring description, whose class
  it gets; this is exactly what the processor's ``post_process_object_detection``
  computes (max over the queries), which turns the outputs into boxes here too.

A description longer than the text encoder's 16 tokens cannot be split (it is one
query): it is refused in one line before the weights load (``check_ontology``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import supervision as sv
import torch

from model_loaders.batching import PreparedImage, prepare_images, same_shape_batches
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, Predictions
from model_loaders.text_prompted import TextPromptedBackend


@dataclass(frozen=True)
class QueryEmbeddings:
    """The ontology's descriptions, their classes, and their text query embeddings."""

    prompts: tuple[str, ...]
    class_ids: tuple[int, ...]
    embeds: torch.Tensor  # (n_prompts, dim), unit length, as the model's forward
    mask: torch.Tensor  # (n_prompts,) True: a real query (the model's query_mask)


class Owlv2Backend(TextPromptedBackend):
    """Zero-shot detection with OWLv2; see the module docstring."""

    what = "OWLv2"
    model_class = "Owlv2ForObjectDetection"
    processor_class = "Owlv2Processor"
    config_class = "Owlv2Config"
    prompt_unit = "query"

    @staticmethod
    def token_count(processor, prompt: str) -> int:
        return len(processor.tokenizer(prompt)["input_ids"])

    @torch.inference_mode()
    def _embed_text(self, ontology: Ontology) -> QueryEmbeddings:
        pairs = ontology.prompts()
        prompts = [prompt for prompt, _ in pairs]
        for prompt in prompts:
            self.check_length(
                prompt, self.token_count(self.processor, prompt), self.max_text_len
            )
        tokens = self.processor.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_text_len,
            return_tensors="pt",
        )
        embeds = self.model.owlv2.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        ).pooler_output
        return QueryEmbeddings(
            prompts=tuple(prompts),
            class_ids=tuple(class_id for _, class_id in pairs),
            embeds=embeds / torch.linalg.norm(embeds, dim=-1, keepdim=True),
            mask=(tokens["input_ids"][:, 0] > 0).to(self.device),
        )

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        queries: QueryEmbeddings = self.text_for(ontology)
        prepared = prepare_images(images, self.processor.image_processor)
        results: list[sv.Detections | None] = [None] * len(images)
        for batch in same_shape_batches(
            prepared, shape=lambda image: image.shape, batch_size=self.spec.batch_size
        ):
            for image, detections in zip(
                batch,
                self._forward(batch, queries, confidence_floor, ontology.class_names),
                strict=True,
            ):
                results[image.index] = detections
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _forward(
        self,
        images: list[PreparedImage],
        queries: QueryEmbeddings,
        confidence_floor: float,
        class_names: list[str],
    ) -> list[sv.Detections]:
        """One vision pass for the batch's images, every description scored at once."""
        from transformers.models.owlv2.modeling_owlv2 import (
            Owlv2ObjectDetectionOutput,
        )

        pixel_values = torch.stack([image.pixel_values for image in images])
        feature_map, _ = self.model.image_embedder(
            pixel_values=pixel_values.to(self.device, self.dtype)
        )
        batch, height, width, hidden = feature_map.shape
        image_feats = feature_map.reshape(batch, height * width, hidden)
        logits, _ = self.model.class_predictor(
            image_feats,
            queries.embeds[None].expand(batch, -1, -1).to(image_feats.dtype),
            queries.mask[None].expand(batch, -1),
        )
        boxes = self.model.box_predictor(image_feats, feature_map)
        # The processor keeps scores > threshold: the float32 just below the floor
        # keeps scores >= the floor.
        processed = self.processor.image_processor.post_process_object_detection(
            Owlv2ObjectDetectionOutput(logits=logits.float(), pred_boxes=boxes.float()),
            threshold=float(np.nextafter(np.float32(confidence_floor), -np.inf)),
            target_sizes=[(image.height, image.width) for image in images],
        )
        return [
            self._detections(image, result, queries, class_names)
            for image, result in zip(images, processed, strict=True)
        ]

    @staticmethod
    def _detections(
        image: PreparedImage,
        result: dict,
        queries: QueryEmbeddings,
        class_names: list[str],
    ) -> sv.Detections:
        # Boxes may reach past the border (or into the square's padding); labels
        # live inside the image.
        xyxy = sv.clip_boxes(
            result["boxes"].cpu().numpy().reshape(-1, 4),
            resolution_wh=(image.width, image.height),
        )
        rows = result["labels"].cpu().tolist()
        class_ids = [queries.class_ids[row] for row in rows]
        return sv.Detections(
            xyxy=xyxy.astype(np.float32),
            confidence=result["scores"].cpu().numpy().astype(np.float32),
            class_id=np.array(class_ids, dtype=int),
            data={
                "class_name": np.array([class_names[i] for i in class_ids], dtype=str),
                "prompt": np.array([queries.prompts[row] for row in rows], dtype=str),
            },
        )
