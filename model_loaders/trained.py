"""A detector the user trained earlier, as a Hugging Face checkpoint, as the labeler.

Any ``AutoModelForObjectDetection`` folder works (DETR, Conditional/Deformable DETR,
RT-DETR, YOLOS, ...): its image processor prepares the images and its own
``post_process_object_detection`` turns outputs into boxes, so each architecture's
scoring (softmax with a no-object class, or sigmoid top-k) stays its own. The model's
class names come from ``config.id2label`` and are mapped onto the ontology by
``class_mapping`` (same name, or ``--map model_name=class``); other classes are dropped.

Safety: weights load as safetensors, or through ``torch.load(weights_only=True)`` for
old ``.bin`` files, and ``trust_remote_code`` stays off: no code from the folder runs.

Batching: as for Grounding DINO, only images of the same resized shape share a batch,
so nothing is padded and a label never depends on its batch mates; images the processor
cannot prepare are named in an ``UnusableImagesError`` before any forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import supervision as sv
import torch

from model_loaders.batching import PreparedImage, prepare_images, same_shape_batches
from model_loaders.class_mapping import ClassMapper, ClassMapping, parse_class_map
from model_loaders.hub import load_pretrained
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelLoadError, ModelSpec, Predictions


class TrainedDetector:
    """A closed-set Hugging Face object detector; see the module docstring.

    The trained classifier (``trained_classifier.py``) shares its loading, class
    mapping and batching, and differs in its auto class and its forward pass.
    """

    auto_model_class = "AutoModelForObjectDetection"
    what = "object detector"

    def __init__(
        self,
        model,
        processor,
        spec: ModelSpec,
        device: torch.device,
        class_map: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.model = model
        self.processor = processor
        self.spec = spec
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.class_names = model_class_names(model.config)
        self.mapper = ClassMapper(self.class_names, class_map, model=spec.model)

    @classmethod
    def load(cls, spec: ModelSpec, *, class_map: Sequence[str] | None = None):
        """Load processor and weights from a local folder or a Hugging Face id.

        Args:
            spec: model (folder or id), device, dtype, batch size.
            class_map: ``--map model_name=class`` options; by default the spec's
                ``class_map`` field when it has one.
        """
        import transformers
        from transformers import AutoImageProcessor

        auto_model = getattr(transformers, cls.auto_model_class)
        pairs = parse_class_map(
            getattr(spec.options, "class_map", ()) if class_map is None else class_map
        )

        def load(dtype):
            processor = AutoImageProcessor.from_pretrained(
                spec.model, trust_remote_code=False
            )
            model = auto_model.from_pretrained(
                spec.model, dtype=dtype, weights_only=True, trust_remote_code=False
            )
            return processor, model

        processor, model, device = load_pretrained(spec, what=cls.what, load=load)
        cls.check_processor(spec, processor)
        return cls(model, processor, spec, device, pairs)

    @classmethod
    def check_processor(cls, spec: ModelSpec, processor) -> None:
        """Refuse a processor that cannot turn this model's outputs into labels."""
        if not hasattr(processor, "post_process_object_detection"):
            raise ModelLoadError(
                f"{spec.model!r}: its image processor {type(processor).__name__} "
                "cannot post-process object detections"
            )

    def class_mapping(self, ontology: Ontology) -> ClassMapping:
        """The model-class -> ontology mapping (validated; raises ClassMappingError)."""
        return self.mapper.for_ontology(ontology)

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        mapping = self.class_mapping(ontology)
        prepared = prepare_images(images, self.processor)
        results: list[sv.Detections | None] = [None] * len(images)
        batches = same_shape_batches(
            prepared, shape=lambda image: image.shape, batch_size=self.spec.batch_size
        )
        for batch in batches:
            for image, detections in zip(
                batch, self._forward(batch, mapping, confidence_floor), strict=True
            ):
                results[image.index] = detections
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _forward(
        self,
        images: list[PreparedImage],
        mapping: ClassMapping,
        confidence_floor: float,
    ) -> list[sv.Detections]:
        pixel_values = torch.stack([image.pixel_values for image in images])
        outputs = self.model(pixel_values=pixel_values.to(self.device, self.dtype))
        for key in ("logits", "pred_boxes"):  # post-processing in float32, any dtype
            outputs[key] = outputs[key].float()
        # Post-processors keep scores strictly above their threshold; the floor is
        # inclusive, so ask for a hair less and filter exactly in to_detections.
        processed = self.processor.post_process_object_detection(
            outputs,
            threshold=float(np.nextafter(np.float32(confidence_floor), -np.inf)),
            target_sizes=[(image.height, image.width) for image in images],
        )
        detections = []
        for image, result in zip(images, processed, strict=True):
            labels = result["labels"].cpu().tolist()
            detections.append(
                mapping.to_detections(
                    xyxy=result["boxes"].cpu().numpy(),
                    confidence=result["scores"].cpu().numpy(),
                    model_names=[self.class_names[label] for label in labels],
                    resolution_wh=(image.width, image.height),
                    confidence_floor=confidence_floor,
                )
            )
        return detections


def model_class_names(config) -> list[str]:
    """Class name per label index, from ``config.id2label`` (gaps get 'LABEL_i')."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    count = max(int(getattr(config, "num_labels", 0)), max(id2label, default=-1) + 1)
    return [id2label.get(i, f"LABEL_{i}") for i in range(count)]
