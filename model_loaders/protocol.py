"""The one small protocol every labeling backend implements, and the spec building one.

A backend is built once per process from a ModelSpec (see ``model_loaders.cache``) and
then asked to predict batches of images for an ontology. It returns one
``supervision.Detections`` per image: absolute ``xyxy`` boxes in the image's own
(EXIF-applied) pixel frame, ``confidence``, ``class_id`` (the 0-based ontology index)
and ``data["class_name"]`` / ``data["prompt"]`` (the description that fired). Per-class
thresholds and NMS are applied after the backend, so that a preview can keep every
candidate and re-filter without calling the model again.

The four tasks share that shape:
- ``detect``: boxes.
- ``segment``: the same boxes plus ``mask`` (one bool HxW mask per detection).
- ``classify``: at most one row per image, the top-1 class, whose box is the whole image
  ``(0, 0, w, h)``; a threshold above its score leaves the image unlabeled.
- ``classify-multi``: one row per class candidate of the image, each scored on its own,
  every box the whole image; per-class thresholds decide each class independently. Boxes
  are all equal, so class-agnostic NMS must never run on classification labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import supervision as sv
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_loaders.ontology import Ontology

DEFAULT_GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}"

Task = Literal["detect", "segment", "classify", "classify-multi"]
SamModelType = Literal["vit_b", "vit_l", "vit_h", "vit_tiny", "vit_mid"]

# The backend each task uses unless a backend is given. Plain data, so that the spec can
# pick a backend without importing the registry (which imports this module).
TASK_BACKENDS: dict[str, str] = {
    "detect": "grounding_dino",
    "segment": "grounded_sam",
    "classify": "clip",
    "classify-multi": "clip",
}
# Tasks each built-in backend can do; a backend not listed here is not checked.
BACKEND_TASKS: dict[str, frozenset[str]] = {
    "grounding_dino": frozenset({"detect"}),
    "grounded_sam": frozenset({"segment"}),
    "clip": frozenset({"classify", "classify-multi"}),
    "trained": frozenset({"detect"}),
    "torchvision": frozenset({"detect"}),
    "roboflow": frozenset({"detect"}),
}
CLASSIFICATION_TASKS = frozenset({"classify", "classify-multi"})


class ModelSpec(BaseModel):
    """Which model to load and how to run it; hashable: it keys the per-process cache.

    ``backend`` follows ``task`` unless it is given: ``ModelSpec(task="segment")`` is a
    Grounded SAM spec. A backend given explicitly must be able to do the task. A CLIP
    spec without ``model`` gets ViT-B-32, and ViT-B-32 without ``pretrained`` gets the
    laion2b_s34b_b79k weights.
    """

    model_config = ConfigDict(frozen=True)

    backend: str = Field(
        "grounding_dino",
        description="Backend name: grounding_dino, grounded_sam or clip; "
        "defaults to the task's backend.",
    )
    task: Task = Field(
        "detect",
        description="detect (boxes), segment (boxes + masks), classify (one class per "
        "image) or classify-multi (any number of classes per image).",
    )
    model: str = Field(
        DEFAULT_GROUNDING_DINO,
        description="Grounding DINO (detect, and the box model of segment): Hugging "
        "Face model id or a local directory. CLIP: an open_clip name (ViT-B-32), "
        "hf-hub:ORG/REPO or local-dir:PATH.",
    )
    device: str = Field(
        "auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16/float16 on a GPU, float32 on CPU."
    )
    batch_size: int = Field(8, ge=1, description="Images per forward pass.")
    prompt_mode: Literal["joint", "per-class"] = Field(
        "joint",
        description="joint: one pass for all classes; per-class: one prompt per "
        "description.",
    )
    sam_checkpoint: str | None = Field(
        None,
        description="segment: Segment Anything weights (.pth state dict), a path or "
        "URL; default: the official URL of sam_model_type (needs internet once).",
    )
    sam_model_type: SamModelType = Field(
        "vit_h",
        description="segment: SAM architecture of the checkpoint: vit_b, vit_l or "
        "vit_h (vit_tiny / vit_mid: small test and benchmark architectures).",
    )
    pretrained: str | None = Field(
        None,
        description="CLIP: open_clip pretrained tag (laion2b_s34b_b79k) or weights "
        "file, for a built-in model name; hf-hub: and local-dir: models ignore it.",
    )
    prompt_template: str = Field(
        DEFAULT_PROMPT_TEMPLATE,
        description="CLIP: how a description becomes a text prompt; '{}' is "
        "replaced by the description.",
    )

    class_map: tuple[str, ...] = Field(
        (),
        description="trained/torchvision/roboflow: MODEL_CLASS=CLASS pairs (--map); "
        "other model classes match ontology classes by name, ignoring case, or are "
        "dropped.",
    )
    dataset: str | None = Field(
        None,
        description=(
            "roboflow: the dataset being labeled, roboflow://WORKSPACE/PROJECT; "
            "a hosted model of another project is refused."
        ),
    )
    architecture: str | None = Field(
        None,
        description="torchvision: detection builder of a state dict, e.g. "
        "fasterrcnn_resnet50_fpn.",
    )
    class_names: str | None = Field(
        None,
        description="torchvision: class names file (JSON list or one a line); "
        "default classes.json/.txt beside the weights.",
    )

    @field_validator("class_map")
    @classmethod
    def _valid_pairs(cls, class_map: tuple[str, ...]) -> tuple[str, ...]:
        from model_loaders.class_mapping import parse_class_map

        parse_class_map(class_map)  # ClassMappingError is a ValueError
        return class_map

    @field_validator("prompt_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        if template.count("{}") != 1:
            raise ValueError(
                f"prompt template {template!r} must contain '{{}}' exactly once "
                "(where the class description goes)"
            )
        return template

    @model_validator(mode="after")
    def _backend_fits_task(self) -> ModelSpec:
        if "backend" not in self.model_fields_set:
            object.__setattr__(self, "backend", self._default_backend())
        if self.backend == "clip":
            if "model" not in self.model_fields_set:
                # The Grounding DINO default means nothing to open_clip.
                object.__setattr__(self, "model", DEFAULT_CLIP_MODEL)
            if self.model == DEFAULT_CLIP_MODEL and self.pretrained is None:
                object.__setattr__(self, "pretrained", DEFAULT_CLIP_PRETRAINED)
        tasks = BACKEND_TASKS.get(self.backend)
        if tasks is not None and self.task not in tasks:
            raise ValueError(
                f"backend {self.backend} cannot do task {self.task}; it does "
                f"{', '.join(sorted(tasks))}"
            )
        return self

    def _default_backend(self) -> str:
        """The backend ``model`` and ``task`` imply: a Roboflow-hosted model, a
        torchvision state dict, or the task's foundation model."""
        if self.model.startswith("roboflow://"):
            return "roboflow"
        if self.architecture is not None:
            return "torchvision"
        return TASK_BACKENDS[self.task]


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; its message is one line: which, and what to do."""


class LabelingModel(Protocol):
    """What the labeling tasks need from a backend."""

    @classmethod
    def load(cls, spec: ModelSpec) -> LabelingModel:
        """Load weights once; raises ModelLoadError with a one-line explanation."""
        ...

    def predict(
        self,
        images: Sequence[Image.Image],
        ontology: Ontology,
        *,
        confidence_floor: float,
    ) -> list[sv.Detections]:
        """One Detections per image: every candidate scoring >= ``confidence_floor``."""
        ...
