"""SAM 3 (transformers ``Sam3Model``) as a labeling backend: boxes, and masks from the
same model.

SAM 3 reads one text prompt per pass, so the cost to avoid is running its vision
encoder once per (image, class). What makes it fast and correct:
- each image goes through the vision encoder once (``get_vision_features``), in batches
  of ``batch_size`` images, and those features serve every description of the ontology
  (``Sam3Model.forward(vision_embeds=...)``);
- the text embeddings of the descriptions are computed once per ontology, in one text
  encoder call, and kept on the instance (``get_text_features``, passed as
  ``text_embeds``);
- the rest of the model (DETR encoder/decoder, mask decoder) runs on batches of up to
  ``batch_size`` (image, description) pairs;
- every image is resized to the same square input (1008 px for the real model), so
  batching never pads and never changes a label;
- the host keeps out of the model's way, as Grounding DINO's does: ``prepare`` (each
  batch resized in uint8 and stacked, pinned on CUDA) runs on the labeling loop's
  feeder thread while the model runs the previous batch
  (``model_loaders.batching.PreparesAhead``), and the pixels are normalised on the
  model's device (``model_loaders.split_processor``, the processor's pixels exactly);
- outputs go through the processor's own ``post_process_instance_segmentation``: scores
  are query score x presence score, boxes are scaled to the image's own pixel frame
  (and clipped to it), masks are upsampled to the image and thresholded at
  ``mask_threshold``. ``detect`` skips the masks (no full-size upsampling).

One class per detection: each description is its own prompt, and each detection row
comes from exactly one description, whose class it gets (``data["prompt"]`` names it).
This is Grounding DINO's per-class mode here: the rows of all descriptions are kept, as
the reference (one processor + model + post-processing call per image and prompt) gives
them. Where two descriptions fire on one object, NMS after the backend decides
(``--nms class`` for descriptions of one class, ``--nms agnostic`` across classes): the
backend drops no candidate, so that a preview can re-filter with other thresholds.

A description longer than the text encoder's 32 tokens cannot be split (it is one
prompt): it is refused in one line before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import supervision as sv
import torch

from model_loaders.batching import (
    PreparedImage,
    prepare_images,
    same_shape_batches,
    stacked_for,
)
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelSpec, Predictions
from model_loaders.split_processor import SplitProcessor, model_input
from model_loaders.text_prompted import TextPromptedBackend


@dataclass(frozen=True)
class PromptEmbeddings:
    """The ontology's descriptions, their classes, and their text embeddings."""

    prompts: tuple[str, ...]
    class_ids: tuple[int, ...]
    embeds: torch.Tensor  # (n_prompts, text_length, hidden): ``text_embeds`` rows
    attention_mask: torch.Tensor  # (n_prompts, text_length)


@dataclass
class PreparedSam3Call:
    """A ``predict`` call's host-side work, done ahead of the model."""

    images: list[PreparedImage]  # in the call's order (index, original size)
    # Each batch's images and their pixels, stacked (pinned on CUDA): uint8 to
    # normalise on the device, or the processor's float32 when it is not split.
    batches: list[tuple[list[PreparedImage], torch.Tensor]]


class Sam3Backend(TextPromptedBackend):
    """Zero-shot detection and segmentation with SAM 3; see the module docstring."""

    what = "SAM 3"
    model_class = "Sam3Model"
    processor_class = "Sam3Processor"
    config_class = "Sam3Config"

    def __init__(self, model, processor, spec: ModelSpec, device: torch.device) -> None:
        super().__init__(model, processor, spec, device)
        self.with_masks = spec.task == "segment"
        # The processor's resize and normalise, split between host and device; None
        # for a configuration it does not reproduce (the processor does it all then).
        self.split_processor = SplitProcessor.matching(processor.image_processor)

    @staticmethod
    def token_count(processor, prompt: str) -> int:
        return int(_tokens(processor, prompt)["input_ids"].shape[1])

    @torch.inference_mode()
    def _embed_text(self, ontology: Ontology) -> PromptEmbeddings:
        pairs = ontology.prompts()
        ids, masks = [], []
        for prompt, _ in pairs:
            tokens = _tokens(self.processor, prompt)
            self.check_length(
                prompt, int(tokens["input_ids"].shape[1]), self.max_text_len
            )
            ids.append(tokens["input_ids"])
            masks.append(tokens["attention_mask"])
        input_ids = torch.cat(ids).to(self.device)
        attention_mask = torch.cat(masks).to(self.device)
        embeds = self.model.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output
        return PromptEmbeddings(
            prompts=tuple(prompt for prompt, _ in pairs),
            class_ids=tuple(class_id for _, class_id in pairs),
            embeds=embeds,
            attention_mask=attention_mask,
        )

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        return self.predict_prepared(
            self.prepare(images, ontology), ontology, confidence_floor=confidence_floor
        )

    def prepare(self, images: Images, ontology: Ontology) -> PreparedSam3Call:
        """The host-side half of ``predict``: each batch's pixels, stacked (pinned on
        CUDA). Safe to run on another thread than the model's; the text embeddings
        are the model's work, made in ``predict_prepared``.

        Raises:
            UnusableImagesError: naming each image the processor cannot take.
        """
        del ontology  # the prompts are embedded by the model, in predict_prepared
        if self.split_processor is not None:
            prepared = prepare_images(images, self.split_processor, together={})
        else:
            prepared = prepare_images(images, self.processor.image_processor)
        batches = [
            (batch, stacked_for(self.device, [image.pixel_values for image in batch]))
            for batch in same_shape_batches(
                prepared,
                shape=lambda image: image.shape,
                batch_size=self.spec.batch_size,
            )
        ]
        return PreparedSam3Call(prepared, batches)

    def predict_prepared(
        self, prepared: PreparedSam3Call, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        """The model's half of ``predict``: the text embeddings (once per ontology),
        the forwards and their post-processing."""
        prompts: PromptEmbeddings = self.text_for(ontology)
        per_image: list[list[sv.Detections]] = [[] for _ in prepared.images]
        for batch, pixels in prepared.batches:
            for image, detections in self._predict_batch(
                batch, pixels, prompts, confidence_floor, ontology.class_names
            ):
                per_image[image.index].append(detections)
        return [
            self._joined(parts, image)
            for parts, image in zip(per_image, prepared.images, strict=True)
        ]

    @torch.inference_mode()
    def _predict_batch(
        self,
        images: list[PreparedImage],
        pixels: torch.Tensor,
        prompts: PromptEmbeddings,
        confidence_floor: float,
        class_names: list[str],
    ) -> list[tuple[PreparedImage, sv.Detections]]:
        """One vision pass for the batch's images, then every (image, prompt) pair."""
        pixel_values = model_input(pixels, self.device, self.split_processor)
        vision = self.model.get_vision_features(
            pixel_values=pixel_values.to(self.dtype)
        )
        pairs = [
            (i, p) for i in range(len(images)) for p in range(len(prompts.prompts))
        ]
        results = []
        size = self.spec.batch_size
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            rows = [images[i] for i, _ in chunk]
            prompt_rows = [p for _, p in chunk]
            outputs = self._decode(vision, [i for i, _ in chunk], prompts, prompt_rows)
            detections = self._post_process(
                outputs, rows, prompts, prompt_rows, confidence_floor, class_names
            )
            results.extend(zip(rows, detections, strict=True))
        return results

    def _decode(
        self,
        vision,
        image_rows: list[int],
        prompts: PromptEmbeddings,
        prompt_rows: list[int],
    ):
        """``Sam3Model.forward`` on precomputed vision features and text embeddings."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        image_index = torch.tensor(image_rows, device=self.device)
        prompt_index = torch.tensor(prompt_rows, device=self.device)
        if image_rows == list(range(vision.fpn_hidden_states[0].shape[0])):
            rows_vision = vision
        else:
            rows_vision = Sam3VisionEncoderOutput(
                fpn_hidden_states=tuple(
                    t.index_select(0, image_index) for t in vision.fpn_hidden_states
                ),
                fpn_position_encoding=tuple(
                    t.index_select(0, image_index) for t in vision.fpn_position_encoding
                ),
            )
        return self.model(
            vision_embeds=rows_vision,
            text_embeds=BaseModelOutputWithPooling(
                pooler_output=prompts.embeds.index_select(0, prompt_index)
            ),
            attention_mask=prompts.attention_mask.index_select(0, prompt_index),
        )

    def _post_process(
        self,
        outputs,
        images: list[PreparedImage],
        prompts: PromptEmbeddings,
        prompt_rows: list[int],
        confidence_floor: float,
        class_names: list[str],
    ) -> list[sv.Detections]:
        """The processor's post-processing; scores >= ``confidence_floor`` kept."""
        from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput

        # The processor keeps scores > threshold: the float32 just below the floor
        # keeps scores >= the floor.
        threshold = float(
            np.nextafter(np.float32(confidence_floor), np.float32(-np.inf))
        )
        sizes = [(image.height, image.width) for image in images]
        logits = outputs.pred_logits.float()
        if self.with_masks:
            masks = outputs.pred_masks.float()
        else:  # detect: boxes only; no mask is upsampled to the image's size
            masks = logits.new_zeros((*logits.shape, 1, 1))
        results = self.processor.post_process_instance_segmentation(
            Sam3ImageSegmentationOutput(
                pred_logits=logits,
                pred_boxes=outputs.pred_boxes.float(),
                pred_masks=masks,
                presence_logits=outputs.presence_logits.float(),
            ),
            threshold=threshold,
            mask_threshold=self.spec.options.mask_threshold,
            target_sizes=sizes if self.with_masks else None,
        )
        detections = []
        for image, prompt_row, result in zip(images, prompt_rows, results, strict=True):
            boxes = result["boxes"]
            if not self.with_masks:  # the processor's own scaling, without the masks
                scale = torch.tensor([[image.width, image.height] * 2])
                boxes = boxes * scale.to(boxes.device)
            # Boxes may reach past the border; labels live inside the image.
            xyxy = sv.clip_boxes(
                boxes.cpu().numpy().reshape(-1, 4),
                resolution_wh=(image.width, image.height),
            )
            count = len(xyxy)
            class_id = prompts.class_ids[prompt_row]
            detections.append(
                sv.Detections(
                    xyxy=xyxy.astype(np.float32),
                    confidence=result["scores"].cpu().numpy().astype(np.float32),
                    class_id=np.full(count, class_id, dtype=int),
                    mask=result["masks"].bool().cpu().numpy()
                    if self.with_masks
                    else None,
                    data={
                        "class_name": np.array(
                            [class_names[class_id]] * count, dtype=str
                        ),
                        "prompt": np.array(
                            [prompts.prompts[prompt_row]] * count, dtype=str
                        ),
                    },
                )
            )
        return detections

    def _joined(self, parts: list[sv.Detections], image) -> sv.Detections:
        """One image's detections of every prompt, in prompt order."""
        parts = [part for part in parts if len(part) > 0]
        if parts:
            return sv.Detections.merge(parts)
        return sv.Detections(
            xyxy=np.zeros((0, 4), dtype=np.float32),
            confidence=np.zeros(0, dtype=np.float32),
            class_id=np.zeros(0, dtype=int),
            mask=np.zeros((0, image.height, image.width), dtype=bool)
            if self.with_masks
            else None,
            data={
                "class_name": np.array([], dtype=str),
                "prompt": np.array([], dtype=str),
            },
        )


def _tokens(processor, prompt: str) -> dict:
    """``prompt`` tokenized as SAM 3's processor does for one text prompt."""
    return processor(text=prompt, return_tensors="pt")
