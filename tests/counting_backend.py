"""A backend that counts model calls: the tiny Grounding DINO behind a call counter.

``counting_spec(path)`` registers it under the backend name ``counting`` (for the whole
test session; it is only reachable by that name) so that it is built through the normal
registry and model cache. Tests compare ``CountingModel.calls`` before and after.
"""

from __future__ import annotations

from model_loaders.backends import BACKENDS, Backend, GroundingDinoOptions
from model_loaders.grounding_dino import GroundingDinoModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelSpec, Predictions


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
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        type(self).calls += 1
        type(self).images += len(images)
        return self.inner.predict(images, ontology, confidence_floor=confidence_floor)


def counting_spec(model_path: str) -> ModelSpec:
    """A ModelSpec for the model at ``model_path`` behind CountingModel, on CPU."""
    BACKENDS.setdefault(
        "counting",
        Backend(
            "tests.counting_backend:CountingModel",
            frozenset({"detect"}),
            GroundingDinoOptions,
            credit_kind="trained",  # not one of the project's foundation models
        ),
    )
    return ModelSpec(backend="counting", model=model_path, device="cpu")
