"""The settings of a labeling run: what to label, with which model, at which thresholds.

One pydantic model so the same value is a Prefect flow parameter (a form in the Prefect
UI), a JSON file saved beside the outputs (approved settings), and the key that tells a
finished chunk from one labeled with other settings.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_loaders.ontology import Ontology
from model_loaders.protocol import CLASSIFICATION_TASKS, ModelSpec
from tasks.thresholds import NmsMode, Thresholds


class LabelSettings(BaseModel):
    """Everything that decides which labels a run produces."""

    model_config = ConfigDict(frozen=True)

    ontology: Ontology
    model: ModelSpec = Field(default_factory=ModelSpec)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    nms: NmsMode = Field("class", description="none, class (per class) or agnostic.")
    nms_iou: float = Field(
        0.5, gt=0.0, le=1.0, description="IoU above which NMS merges."
    )
    chunk_size: int = Field(128, ge=1, description="Images per labeling task.")

    @model_validator(mode="after")
    def _no_nms_between_classes_of_an_image(self) -> LabelSettings:
        """A classification label's box is the whole image, so NMS across classes would
        keep one class per image: classification runs without NMS."""
        if self.model.task in CLASSIFICATION_TASKS and self.nms != "none":
            if self.nms == "agnostic" and "nms" in self.model_fields_set:
                raise ValueError(
                    f"--nms agnostic merges every class of an image for --task "
                    f"{self.model.task}: use --nms none"
                )
            object.__setattr__(self, "nms", "none")
        return self

    def fingerprint(self) -> str:
        """A short hash of what changes labels (not of how they are computed, e.g.
        device)."""
        relevant = self.model_dump(
            exclude={"chunk_size": True, "model": {"device", "batch_size"}}
        )
        text = json.dumps(relevant, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
