"""Randomly initialised OWLv2 checkpoints, saved like real ones (``save_pretrained``).

As for SAM 3 (``random_init_sam3``): nothing can be downloaded on CI or offline
machines, so tests save a random ``Owlv2ForObjectDetection`` and its ``Owlv2Processor``
into a folder of exactly the form of ``google/owlv2-base-patch16-ensemble`` and load it
through ``--model DIR``. The tokenizer is CLIP's BPE rebuilt offline from open_clip's
bundled vocabulary (the ids of the real checkpoint), reading at most 16 tokens, as the
real one does.

``tiny``: 64 px input, 16 px patches (16 boxes per image), 1-layer 32-wide vision and
text towers; builds, saves and runs in well under a second. Its labels are meaningless;
its box and score heads are scaled down so that boxes have a size and scores spread
(about 0.2-0.8) instead of saturating at 1.
"""

from __future__ import annotations

from pathlib import Path

TEXT_LENGTH = 16  # OWLv2 reads at most 16 tokens per text query


def build_config(image_size: int = 64, width: int = 32):
    """A small ``Owlv2Config`` (see the module docstring)."""
    from transformers import Owlv2Config

    tower = {
        "hidden_size": width,
        "intermediate_size": width * 2,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    return Owlv2Config(
        text_config={
            **tower,
            "vocab_size": 49408,
            "max_position_embeddings": TEXT_LENGTH,
        },
        vision_config={**tower, "image_size": image_size, "patch_size": 16},
        projection_dim=width,
    )


def save_random_owlv2(path: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Save a random tiny OWLv2 and its processor into folder ``path``; returns it."""
    import torch
    from transformers import (
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    from model_loaders.random_init_sam3 import clip_tokenizer

    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(build_config(image_size)).eval()
    with torch.no_grad():  # random heads saturate: every score 1, every box flat
        model.box_head.dense2.weight *= 0.01
        model.class_head.logit_scale.weight *= 0.01
        model.class_head.logit_shift.weight *= 0.1
    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = TEXT_LENGTH
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(
            size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
