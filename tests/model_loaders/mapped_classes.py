"""The class mapping shared by the tests of user-trained detectors (Hugging Face and
torchvision): the model knows person, can and dog; the ontology takes "person" by name
(case differs), "can" renamed to "soda" by --map, and drops "dog".

A helper module, not a test module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import supervision as sv
from PIL import Image

from model_loaders.ontology import Ontology

MODEL_CLASSES = ("person", "can", "dog")
ONTOLOGY = Ontology.from_class_options(["Person", "soda: a soda can"])
CLASS_MAP = ("can=soda",)
EXPECTED = {"person": 0, "can": 1, "dog": None}  # model class -> ontology id
# (ontology class, model class) of every label: what --map and the names give.
LABELED_AS = {("Person", "person"), ("soda", "can")}


def assert_mapped_like_reference(
    detections: sv.Detections,
    image: Image.Image,
    boxes: np.ndarray,
    scores: np.ndarray,
    names: list[str],
    *,
    score_atol: float,
) -> None:
    """``detections`` of ``image`` are the reference's (``boxes``, ``scores`` and model
    class ``names``, in order) less the dropped class, clipped to the image and mapped
    onto the ontology."""
    kept = np.array([EXPECTED[n] is not None for n in names], dtype=bool)
    np.testing.assert_allclose(
        detections.xyxy, sv.clip_boxes(boxes[kept], image.size), atol=1e-3
    )
    np.testing.assert_allclose(detections.confidence, scores[kept], atol=score_atol)
    kept_names = [n for n in names if EXPECTED[n] is not None]
    assert detections.class_id.tolist() == [EXPECTED[n] for n in kept_names]
    assert detections.data["prompt"].tolist() == kept_names
    assert detections.data["class_name"].tolist() == [
        ONTOLOGY.class_names[EXPECTED[n]] for n in kept_names
    ]


def labeled_as(labels: pd.DataFrame) -> set[tuple[str, str]]:
    """The (ontology class, model class) pairs found in a label table."""
    return set(zip(labels["class_name"], labels["prompt"], strict=True))
