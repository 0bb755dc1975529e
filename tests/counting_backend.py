"""A backend that counts model calls: the tiny Grounding DINO behind a call counter.

``counting_spec(path)`` registers it under the backend name ``counting`` (for the whole
test session; it is only reachable by that name) so that it is built through the normal
registry and model cache. Tests compare ``CountingModel.calls`` before and after.
"""

from __future__ import annotations

from collections.abc import Sequence

import supervision as sv
from PIL import Image

from model_loaders import registry
from model_loaders.grounding_dino import GroundingDinoModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec


class CountingModel:
    """Wraps the real backend; ``calls`` and ``images`` count every predict."""

    calls = 0
    images = 0

    def __init__(self, inner: GroundingDinoModel) -> None:
        self.inner = inner

    @classmethod
    def load(cls, spec: ModelSpec) -> CountingModel:
        return cls(GroundingDinoModel.load(spec))

    def predict(
        self,
        images: Sequence[Image.Image],
        ontology: Ontology,
        *,
        confidence_floor: float,
    ) -> list[sv.Detections]:
        type(self).calls += 1
        type(self).images += len(images)
        return self.inner.predict(images, ontology, confidence_floor=confidence_floor)


def counting_spec(model_path: str) -> ModelSpec:
    """A ModelSpec for the model at ``model_path`` behind CountingModel, on CPU."""
    registry.BACKENDS.setdefault("counting", "tests.counting_backend:CountingModel")
    return ModelSpec(backend="counting", model=model_path, device="cpu")
