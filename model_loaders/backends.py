"""The one table of labeling backends, and the options each one takes.

A backend is named here once: the class that implements it (as "module:Class", imported
only when used, so that naming a backend never imports torch, transformers,
segment_anything or open_clip), the tasks it can do, which rate it is charged at, the
model it loads when none is given, and the pydantic model of its own options. A new
backend is one module implementing ``model_loaders.protocol.LabelingModel`` plus one
row in ``BACKENDS``; the command line, the review page, credits and ``ModelSpec`` read
everything else from the row.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from model_loaders.protocol import LabelingModel

Task = Literal["detect", "segment", "classify", "classify-multi"]
TASKS: tuple[Task, ...] = get_args(Task)
CLASSIFICATION_TASKS = frozenset({"classify", "classify-multi"})

DEFAULT_GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}"
DEFAULT_SAM3 = "facebook/sam3"
DEFAULT_OWLV2 = "google/owlv2-base-patch16-ensemble"
DEFAULT_MM_GROUNDING_DINO = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg"

SamModelType = Literal["vit_b", "vit_l", "vit_h", "vit_tiny", "vit_mid"]


class BackendOptions(BaseModel):
    """Options of one backend; empty for a backend that takes none."""

    model_config = ConfigDict(frozen=True)


class GroundingDinoOptions(BackendOptions):
    """Grounding DINO: how the class descriptions are put to the model."""

    prompt_mode: Literal["joint", "per-class"] = Field(
        "joint",
        description="joint: one pass for all classes; per-class: one prompt per "
        "description.",
    )


class GroundedSamOptions(GroundingDinoOptions):
    """Grounded SAM: Grounding DINO's boxes, Segment Anything's masks."""

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


class Sam3Options(BackendOptions):
    """SAM 3: boxes and masks from one model, one text prompt per description."""

    mask_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="segment: SAM 3 mask probability at or below which a pixel is "
        "outside the mask.",
    )


class ClipOptions(BackendOptions):
    """CLIP: which weights, and how a description becomes a text prompt."""

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

    @field_validator("prompt_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        if template.count("{}") != 1:
            raise ValueError(
                f"prompt template {template!r} must contain '{{}}' exactly once "
                "(where the class description goes)"
            )
        return template


class TrainedOptions(BackendOptions):
    """A model trained on the user's own classes: how its classes map to ours."""

    class_map: tuple[str, ...] = Field(
        (),
        description="MODEL_CLASS=CLASS pairs (--map); other model classes match "
        "ontology classes by name, ignoring case, or are dropped.",
    )

    @field_validator("class_map")
    @classmethod
    def _valid_pairs(cls, class_map: tuple[str, ...]) -> tuple[str, ...]:
        from model_loaders.class_mapping import parse_class_map

        parse_class_map(class_map)  # ClassMappingError is a ValueError
        return class_map


class TorchvisionOptions(TrainedOptions):
    """A torchvision detection state dict: its architecture and class names."""

    architecture: str | None = Field(
        None,
        description="Detection builder of the state dict, e.g. "
        "fasterrcnn_resnet50_fpn.",
    )
    class_names: str | None = Field(
        None,
        description="Class names file (JSON list or one a line); default "
        "classes.json/.txt beside the weights.",
    )


class RoboflowOptions(TrainedOptions):
    """A Roboflow-hosted model: the dataset it may label."""

    dataset: str | None = Field(
        None,
        description="The dataset being labeled, roboflow://WORKSPACE/PROJECT; a "
        "hosted model of another project is refused.",
    )


@dataclass(frozen=True)
class Backend:
    """What the project knows of one backend without importing it."""

    target: str  # "module:Class"
    tasks: frozenset[str]
    options: type[BackendOptions]
    default_model: str | None = None  # None: --model must be given
    # "task": charged at the rate of its task (a foundation model); "trained": at
    # the rate of the user's own model.
    credit_kind: Literal["task", "trained"] = "task"
    default_for: frozenset[str] = frozenset()  # tasks it labels unless told otherwise


BACKENDS: dict[str, Backend] = {
    "grounding_dino": Backend(
        "model_loaders.grounding_dino:GroundingDinoModel",
        frozenset({"detect"}),
        GroundingDinoOptions,
        DEFAULT_GROUNDING_DINO,
        default_for=frozenset({"detect"}),
    ),
    "grounded_sam": Backend(
        "model_loaders.grounded_sam:GroundedSamModel",
        frozenset({"segment"}),
        GroundedSamOptions,
        DEFAULT_GROUNDING_DINO,
        default_for=frozenset({"segment"}),
    ),
    "sam3": Backend(
        "model_loaders.sam3:Sam3Backend",
        frozenset({"detect", "segment"}),
        Sam3Options,
        DEFAULT_SAM3,
    ),
    "mm_grounding_dino": Backend(
        "model_loaders.grounding_dino:MMGroundingDinoModel",
        frozenset({"detect"}),
        GroundingDinoOptions,
        DEFAULT_MM_GROUNDING_DINO,
    ),
    "owlv2": Backend(
        "model_loaders.owlv2:Owlv2Backend",
        frozenset({"detect"}),
        BackendOptions,
        DEFAULT_OWLV2,
    ),
    "clip": Backend(
        "model_loaders.clip:ClipModel",
        CLASSIFICATION_TASKS,
        ClipOptions,
        DEFAULT_CLIP_MODEL,
        default_for=CLASSIFICATION_TASKS,
    ),
    "trained": Backend(
        "model_loaders.trained:TrainedDetector",
        frozenset({"detect"}),
        TrainedOptions,
        credit_kind="trained",
    ),
    "trained_classifier": Backend(
        "model_loaders.trained_classifier:TrainedClassifier",
        CLASSIFICATION_TASKS,
        TrainedOptions,
        credit_kind="trained",
    ),
    "torchvision": Backend(
        "model_loaders.torchvision_detector:TorchvisionDetector",
        frozenset({"detect"}),
        TorchvisionOptions,
        credit_kind="trained",
    ),
    "roboflow": Backend(
        "model_loaders.roboflow_hosted:RoboflowHostedModel",
        frozenset({"detect"}),
        RoboflowOptions,
        credit_kind="trained",
    ),
}

# Every backend option's name, for specs given as one flat mapping (the command line).
OPTION_FIELDS = frozenset(
    name for backend in BACKENDS.values() for name in backend.options.model_fields
)


class UnknownBackendError(ValueError):
    """A backend name that is not in ``BACKENDS``."""


def backend_info(name: str) -> Backend:
    """The row of backend ``name``."""
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise UnknownBackendError(
            f"unknown backend {name!r}; known backends: {known}"
        ) from None


def backend_for_task(task: str) -> str:
    """The backend a task uses unless another is given."""
    for name, backend in BACKENDS.items():
        if task in backend.default_for:
            return name
    raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


def backend_class(name: str) -> type[LabelingModel]:
    """The class implementing backend ``name``, imported now."""
    from model_loaders.protocol import ModelLoadError

    try:
        target = backend_info(name).target
    except UnknownBackendError as error:
        raise ModelLoadError(str(error)) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_for_model(model: str | None, task: str) -> str | None:
    """The backend that does ``task`` with ``model``, from what the model is (see
    ``model_loaders.model_family``); None when nothing tells (the task decides).

    Raises:
        UnknownModelError: A local folder that is no model any backend knows (exit 1).
        ValueError: A known model asked for a task it cannot do (exit 2).
    """
    from model_loaders.model_family import model_family

    family = model_family(model, trained=_trained_backends())
    if family is None:
        return None
    return family.backend_for(task, str(model))


def _trained_backends() -> dict[str, str]:
    """Task -> the backend running the user's own Hugging Face models for it: the
    ``trained`` row (and a classifier row, where one does classification)."""
    found: dict[str, str] = {}
    for name in ("trained", "trained_classifier"):
        backend = BACKENDS.get(name)
        for task in backend.tasks if backend else ():
            found.setdefault(task, name)
    return found
