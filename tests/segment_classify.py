"""Settings of the segment (Grounded SAM) and classify (CLIP) tests, in and out of
Prefect: one ontology whose classes the sample photos show (astronaut, chelsea the cat,
rocket), on the session's tiny random models.

A helper module, not a test module.
"""

from __future__ import annotations

from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds

ONTOLOGY = Ontology.from_class_options(["person: astronaut", "cat", "rocket"])


def segment_settings(dino: str, sam: str, **fields) -> LabelSettings:
    """Grounding DINO boxes, SAM masks, two images a batch and a chunk."""
    return LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(
            task="segment",
            model=dino,
            sam_checkpoint=sam,
            sam_model_type="vit_tiny",
            device="cpu",
            batch_size=2,
        ),
        thresholds=Thresholds(default=0.4),
        chunk_size=2,
        **fields,
    )


def classify_settings(
    task: str, clip: str, *, batch_size: int, threshold: float, chunk_size: int
) -> LabelSettings:
    """CLIP, single-label (``classify``) or multi-label (``classify-multi``)."""
    return LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(task=task, model=clip, device="cpu", batch_size=batch_size),
        thresholds=Thresholds(default=threshold),
        nms="none",
        chunk_size=chunk_size,
    )
