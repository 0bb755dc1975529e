"""Grounded SAM as a labeling backend: Grounding DINO boxes, Segment Anything masks.

The boxes come from the Grounding DINO backend itself (loaded through the per-process
cache), so detection and segmentation label the same boxes with the same scores. Then,
per image:
- the SAM image embedding is computed once (images are encoded in batches: SAM pads
  every image to the same square input, so batching never changes an embedding's input);
- ALL of the image's boxes go through the prompt encoder and mask decoder in one call,
  as ``SamPredictor.predict_torch`` with a box batch does, never one decoder call per
  box (Autodistill's way). Only beyond ``MAX_BOXES_PER_DECODE`` boxes is the batch
  split, to bound memory: the decoder copies the 64x64x256 embedding once per box and
  upsamples every mask to full resolution as float32;
- images without boxes skip SAM entirely;
- the host-side half (the box model's preparation, and each image resized for SAM)
  runs ahead of the model on the labeling loop's feeder thread
  (``model_loaders.batching.PreparesAhead``); the rest of SAM's preprocessing runs
  on the model's device, as before.

Each box gets SAM's single-mask output (``multimask_output=False``, SAM's recommendation
for box prompts), thresholded at ``mask_threshold``; the box and score stay Grounding
DINO's. SAM runs in float32 whatever the spec's dtype.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from model_loaders.batching import PreparesAhead
from model_loaders.device import resolve_device
from model_loaders.ontology import Ontology
from model_loaders.protocol import (
    Images,
    LabelingModel,
    ModelLoadError,
    ModelSpec,
    Predictions,
)

SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
MAX_BOXES_PER_DECODE = 64


@dataclass
class PreparedSamCall:
    """A ``predict`` call's host-side work, done ahead of the model."""

    images: Sequence[Image.Image]
    boxes: object  # the box model's prepared call; None if it prepares in predict
    resized: list[torch.Tensor]  # each image resized for SAM: (H, W, 3) uint8


class GroundedSamModel:
    """Zero-shot instance segmentation: Grounding DINO boxes, SAM masks."""

    def __init__(
        self, boxes: LabelingModel, sam, spec: ModelSpec, device: torch.device
    ) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.boxes = boxes
        self.sam = sam
        self.spec = spec
        self.device = device
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @classmethod
    def load(cls, spec: ModelSpec) -> GroundedSamModel:
        """Load SAM from the spec's SAM checkpoint; Grounding DINO from the cache."""
        from model_loaders.cache import get_model

        device = resolve_device(spec.device)
        sam = load_sam(spec.options.sam_model_type, spec.options.sam_checkpoint)
        boxes = get_model(box_model_spec(spec))
        return cls(boxes, sam.to(device).eval(), spec, device)

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        return self.predict_prepared(
            self.prepare(images, ontology), ontology, confidence_floor=confidence_floor
        )

    def prepare(self, images: Images, ontology: Ontology) -> PreparedSamCall:
        """The host-side half of ``predict``, safe on another thread: the box
        model's preparation and each image resized for SAM (pinned on CUDA).

        Every image is resized, even one that will get no box: the boxes are not
        known yet, and detectors rarely leave a photo empty.
        """
        boxes = (
            self.boxes.prepare(images, ontology)
            if isinstance(self.boxes, PreparesAhead)
            else None
        )
        return PreparedSamCall(images, boxes, [self._resized(i) for i in images])

    def predict_prepared(
        self, prepared: PreparedSamCall, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        """The model's half of ``predict``: boxes, then SAM masks for them."""
        images = prepared.images
        if prepared.boxes is None:
            detections = self.boxes.predict(
                images, ontology, confidence_floor=confidence_floor
            )
        else:
            detections = self.boxes.predict_prepared(
                prepared.boxes, ontology, confidence_floor=confidence_floor
            )
        for image, image_detections in zip(images, detections, strict=True):
            if len(image_detections) == 0:
                image_detections.mask = np.zeros(
                    (0, image.height, image.width), dtype=bool
                )
        needs_masks = [i for i, d in enumerate(detections) if len(d) > 0]
        size = self.spec.batch_size
        for start in range(0, len(needs_masks), size):
            batch = needs_masks[start : start + size]
            embeddings, input_sizes = self._embed_resized(
                [prepared.resized[i] for i in batch]
            )
            on_device = [
                self._masks_on_device(
                    embeddings[row : row + 1],
                    detections[index].xyxy,
                    input_size=input_sizes[row],
                    original_size=(images[index].height, images[index].width),
                )
                for row, index in enumerate(batch)
            ]
            for index, masks in zip(batch, _to_host(on_device), strict=True):
                detections[index].mask = masks
        return detections

    def embed(
        self, images: Sequence[Image.Image]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """SAM image embeddings of a batch, and each image's resized (h, w) input size.

        The same steps as ``SamPredictor.set_image``, for several images at once.
        """
        return self._embed_resized([self._resized(image) for image in images])

    def _resized(self, image: Image.Image) -> torch.Tensor:
        """The image resized to SAM's longest side, (H, W, 3) uint8 on the host."""
        resized = torch.from_numpy(
            self.transform.apply_image(np.asarray(image.convert("RGB")))
        )
        return resized.pin_memory() if self.device.type == "cuda" else resized

    @torch.inference_mode()
    def _embed_resized(
        self, resized: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        inputs, input_sizes = [], []
        for pixels in resized:
            tensor = pixels.to(self.device, non_blocking=True)
            tensor = tensor.permute(2, 0, 1).contiguous()[None]
            input_sizes.append((int(tensor.shape[-2]), int(tensor.shape[-1])))
            inputs.append(self.sam.preprocess(tensor.float()))
        return self.sam.image_encoder(torch.cat(inputs)), input_sizes

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        xyxy: np.ndarray,
        *,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> np.ndarray:
        """Bool masks (N, H, W) for all boxes of one image, in one decoder call.

        The same steps as ``SamPredictor.predict_torch(boxes=...)`` with
        ``multimask_output=False``.
        """
        (masks,) = _to_host(
            [
                self._masks_on_device(
                    embedding, xyxy, input_size=input_size, original_size=original_size
                )
            ]
        )
        return masks

    @torch.inference_mode()
    def _masks_on_device(
        self,
        embedding: torch.Tensor,
        xyxy: np.ndarray,
        *,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """``decode``'s masks, left on the model's device: a batch's images are
        decoded one after another without waiting for the device, then copied to
        the host together (``_to_host``)."""
        boxes = torch.as_tensor(xyxy, dtype=torch.float32, device=self.device)
        boxes = self.transform.apply_boxes_torch(boxes.reshape(-1, 4), original_size)
        height, width = original_size
        masks = []
        for start in range(0, len(boxes), MAX_BOXES_PER_DECODE):
            sparse, dense = self.sam.prompt_encoder(
                points=None,
                boxes=boxes[start : start + MAX_BOXES_PER_DECODE],
                masks=None,
            )
            low_res, _ = self.sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            upscaled = self.sam.postprocess_masks(low_res, input_size, original_size)
            masks.append(upscaled[:, 0] > self.sam.mask_threshold)
        if not masks:
            return torch.zeros((0, height, width), dtype=torch.bool, device=self.device)
        return masks[0] if len(masks) == 1 else torch.cat(masks)


def _to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Device tensors as numpy arrays, with one wait for a CUDA device per call
    instead of one per tensor: the copies are queued without blocking, then the
    stream is synchronised once. On the CPU they are the tensors' own memory."""
    if not tensors or tensors[0].device.type != "cuda":
        return [tensor.numpy() for tensor in tensors]
    host = [tensor.to("cpu", non_blocking=True) for tensor in tensors]
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [tensor.numpy() for tensor in host]


def box_model_spec(spec: ModelSpec) -> ModelSpec:
    """The Grounding DINO spec whose boxes a Grounded SAM spec segments."""
    return ModelSpec(
        backend="grounding_dino",
        task="detect",
        model=spec.model,
        device=spec.device,
        dtype=spec.dtype,
        batch_size=spec.batch_size,
        prompt_mode=spec.options.prompt_mode,
    )


def load_sam(model_type: str, checkpoint: str | None):
    """A ``segment_anything`` Sam of ``model_type`` with the weights of ``checkpoint``.

    ``checkpoint`` is a ``.pth`` state dict path or URL (None: Meta's official URL for
    the type). Weights are read with ``torch.load(weights_only=True)``: a checkpoint is
    data, never code.
    """
    path = _checkpoint_file(model_type, checkpoint)
    sam = build_sam(model_type)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, not a state dict
        raise ModelLoadError(
            f"cannot read SAM checkpoint {path}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}"
        ) from error
    try:
        sam.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ModelLoadError(
            f"SAM checkpoint {path} does not fit --sam-model-type {model_type}: pass "
            "the type it was trained as (vit_b, vit_l or vit_h)"
        ) from error
    return sam.eval()


def build_sam(model_type: str):
    """An untrained Sam of ``model_type``: Meta's three or a small test architecture."""
    from model_loaders.random_init_sam_clip import SMALL_SAM_TYPES, build_small_sam

    if model_type in SMALL_SAM_TYPES:
        return build_small_sam(model_type)
    from segment_anything import sam_model_registry

    if model_type not in SAM_CHECKPOINT_URLS:
        raise ModelLoadError(
            f"unknown --sam-model-type {model_type!r}: use vit_b, vit_l or vit_h"
        )
    return sam_model_registry[model_type]()


def _checkpoint_file(model_type: str, checkpoint: str | None) -> Path:
    """The local weights file, downloaded into torch's hub cache if it is a URL."""
    if checkpoint is None:
        if model_type not in SAM_CHECKPOINT_URLS:
            raise ModelLoadError(
                f"--sam-model-type {model_type} has no official weights: pass "
                "--sam-checkpoint PATH"
            )
        checkpoint = SAM_CHECKPOINT_URLS[model_type]
    if "://" not in checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"--sam-checkpoint {checkpoint}: no such file")
        return path
    cached = (
        Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(checkpoint).path).name
    )
    if cached.is_file():
        return cached
    host = urlparse(checkpoint).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise ModelLoadError(
            f"cannot load SAM weights {checkpoint}: not in {cached.parent} and {host} "
            "cannot be reached (offline?). On a machine with internet download that "
            "file, copy it here and pass --sam-checkpoint PATH."
        ) from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(checkpoint, str(cached), progress=False)
    except Exception as error:  # HTTP errors, disk full, interrupted transfer
        raise ModelLoadError(
            f"cannot download SAM weights {checkpoint}: {type(error).__name__}: {error}"
        ) from error
    return cached
