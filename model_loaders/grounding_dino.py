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
  labels the rest (``tasks.label.predict_usable``);
- the host keeps out of the model's way: ``prepare`` (resize images of one size in
  one call, stack each batch in uint8, pinned on CUDA, tokenise) runs on the labeling
  loop's feeder thread while the model runs the previous batch
  (``model_loaders.batching.PreparesAhead``); the pixels are normalised on the model's
  device (``model_loaders.split_processor``: the processor's pixels exactly, for a
  fifth of its host time at 1280x960 and a quarter of the bytes to copy), and each
  forward ends in one copy to the host of everything post-processing reads.
"""

from __future__ import annotations

import threading
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
from model_loaders.split_processor import SplitProcessor, model_input

# Elements of the (rows, queries, tokens, phrases) tensor scoring several rows at once:
# 64 MB in float32, so a full model (900 queries, 256 tokens, 80 classes) scores one
# row at a time and a small one a whole batch.
MAX_SCORE_ELEMENTS = 16 * 2**20


@dataclass
class ReadyBatch:
    """One forward's inputs, made on the host ahead of the model."""

    # (B, 3, H, W), pinned when the model is on CUDA: uint8 resized pixels to
    # normalise on the device, or the processor's float32 ones when it is not split
    pixel_values: torch.Tensor
    images: list[PreparedImage]  # each row's image (index, original size)
    text_indices: list[int]  # each row's prompt text
    tokens: dict[str, torch.Tensor]  # the texts tokenised together, padded
    offsets: list[list[tuple[int, int]]]  # each row's token character offsets


@dataclass
class PreparedCall:
    """Everything ``predict_prepared`` needs for one ``predict`` call's images."""

    count: int  # images in the call
    texts: list[PromptText]
    batches: list[ReadyBatch]


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
        # A fast tokenizer must not be called from two threads at once ("Already
        # borrowed"): prepare runs on the feeder thread, texts_for anywhere.
        self._tokenizer_lock = threading.RLock()
        self._phrase_masks: dict[tuple, torch.Tensor] = {}  # on the model's device
        # The processor's resize and normalise, split between host and device; None
        # for a configuration it does not reproduce (the processor does it all then).
        self.split_processor = SplitProcessor.matching(processor.image_processor)

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
        return self.predict_prepared(
            self.prepare(images, ontology), ontology, confidence_floor=confidence_floor
        )

    def prepare(self, images: Images, ontology: Ontology) -> PreparedCall:
        """The host-side half of ``predict``: pixels per batch (stacked, pinned on
        CUDA) and tokens. Safe to run on another thread than the model's.

        Raises:
            UnusableImagesError: naming each image the processor cannot take.
        """
        texts = self.texts_for(ontology)
        prepared = prepare_images(
            images,
            self.split_processor or self.processor.image_processor,
            together={"do_pad": False},
        )
        batches = []
        for batch in self._batches(prepared, len(texts)):
            rows = [image.pixel_values for image, _ in batch]
            pixels = stacked_for(self.device, rows)
            text_indices = [text_index for _, text_index in batch]
            with self._tokenizer_lock:
                tokens = self.processor.tokenizer(
                    [texts[i].text for i in text_indices],
                    padding="longest",
                    return_offsets_mapping=True,
                    return_tensors="pt",
                )
            offsets = tokens.pop("offset_mapping").tolist()
            batches.append(
                ReadyBatch(
                    pixels,
                    [image for image, _ in batch],
                    text_indices,
                    dict(tokens),
                    offsets,
                )
            )
        return PreparedCall(len(images), texts, batches)

    def predict_prepared(
        self, prepared: PreparedCall, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        """The model's half of ``predict``: the forwards and their post-processing."""
        per_image: list[list[sv.Detections]] = [[] for _ in range(prepared.count)]
        for batch in prepared.batches:
            detections = self._forward(
                batch, prepared.texts, confidence_floor, ontology.class_names
            )
            for image, image_detections in zip(batch.images, detections, strict=True):
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
        batch: ReadyBatch,
        all_texts: list[PromptText],
        confidence_floor: float,
        class_names: list[str],
    ) -> list[sv.Detections]:
        from transformers.image_transforms import center_to_corners_format

        texts = [all_texts[i] for i in batch.text_indices]
        pixel_values = model_input(
            batch.pixel_values, self.device, self.split_processor
        )
        outputs = self.model(
            pixel_values=pixel_values.to(self.dtype),
            # No padding, so every pixel is valid. Bool, as the model's signature
            # says: the processor's int64 mask is 55 MB for a batch of 8 at 800x1066,
            # allocated and filled again before every forward.
            pixel_mask=torch.ones(
                pixel_values.shape[0],
                *pixel_values.shape[2:],
                dtype=torch.bool,
                device=self.device,
            ),
            **{name: value.to(self.device) for name, value in batch.tokens.items()},
        )
        probs = outputs.logits.float().sigmoid()
        boxes = center_to_corners_format(outputs.pred_boxes.float())
        confidence, phrase_index = self._best_phrases(probs, batch, texts)
        scale = torch.tensor(
            [[image.width, image.height] * 2 for image in batch.images],
            device=boxes.device,
        )
        # One copy to the host per batch: boxes in pixels, confidence, phrase index.
        host = (
            torch.cat(
                [
                    boxes * scale[:, None, :],
                    confidence[..., None],
                    phrase_index[..., None].float(),
                ],
                dim=-1,
            )
            .cpu()
            .numpy()
        )
        floor = np.float32(confidence_floor)  # compared in float32, as torch did
        return [
            _detections(host[row], text, image, floor, class_names)
            for row, (image, text) in enumerate(zip(batch.images, texts, strict=True))
        ]

    def _best_phrases(
        self, probs: torch.Tensor, batch: ReadyBatch, texts: list[PromptText]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's best phrase per query: (confidence, phrase index), each
        (rows, queries). Rows of one text are scored together, as few ops as memory
        allows (a batch of a small model in one): each op on the main thread is a
        chance for the host threads to hold it up."""
        length = batch.tokens["input_ids"].shape[1]
        rows_of: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            rows_of.setdefault(text.text, []).append(row)
        confidence = torch.empty(
            probs.shape[:2], dtype=probs.dtype, device=probs.device
        )
        phrase_index = torch.empty(
            probs.shape[:2], dtype=torch.long, device=probs.device
        )
        for rows in rows_of.values():
            mask = self._phrase_mask(batch.offsets[rows[0]], texts[rows[0]], length)
            per_op = max(1, MAX_SCORE_ELEMENTS // (probs.shape[1] * mask.numel()))
            for start in range(0, len(rows), per_op):
                part = rows[start : start + per_op]
                best = phrase_scores(probs[part], mask).max(dim=-1)
                confidence[part], phrase_index[part] = best.values, best.indices
        return confidence, phrase_index

    def _phrase_mask(
        self, offsets: list[tuple[int, int]], text: PromptText, length: int
    ) -> torch.Tensor:
        """``phrase_token_mask`` on the model's device, made once per text and
        padded length (the same text always tokenises alike)."""
        key = (text.text, tuple((p.start, p.end) for p in text.phrases), length)
        mask = self._phrase_masks.get(key)
        if mask is None:
            mask = phrase_token_mask(offsets, text.phrases, length).to(self.device)
            self._phrase_masks[key] = mask
        return mask

    def _count_tokens(self, piece: str) -> int:
        with self._tokenizer_lock:
            ids = self.processor.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return len(ids)


def _detections(
    rows: np.ndarray,
    text: PromptText,
    image: PreparedImage,
    floor: np.float32,
    class_names: list[str],
) -> sv.Detections:
    """One image's detections from its (queries, 6) host rows: x0, y0, x1, y1 in
    pixels, confidence, phrase index."""
    kept = rows[rows[:, 4] >= floor]
    # Boxes may reach past the border; labels live inside the image.
    xyxy = sv.clip_boxes(kept[:, :4], resolution_wh=(image.width, image.height))
    chosen = [text.phrases[i] for i in kept[:, 5].astype(int).tolist()]
    return sv.Detections(
        xyxy=xyxy.astype(np.float32).reshape(-1, 4),
        confidence=kept[:, 4].astype(np.float32),
        class_id=np.array([p.class_id for p in chosen], dtype=int),
        data={
            "class_name": np.array(
                [class_names[p.class_id] for p in chosen], dtype=str
            ),
            "prompt": np.array([p.prompt for p in chosen], dtype=str),
        },
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
