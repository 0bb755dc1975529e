"""Randomly initialised Grounding DINO checkpoints, saved exactly like a downloaded one.

Weights cannot be downloaded on CI or on offline machines, so the tests, the benchmarks
and the offline demo build a model from a config, save it (weights + processor) to a
folder, and then load that folder through the same ``--model PATH`` code path a user's
real checkpoint takes. The compute of a random model equals that of a trained one of the
same architecture; its labels are meaningless.

Sizes:
- ``tiny``: ~0.5 M parameters, small images; for tests (builds and runs in well under a
  second).
- ``mid``: a scaled-down architecture that runs in seconds per image on two CPU cores;
  benchmarks.
- ``full``: ``GroundingDinoConfig()`` defaults, i.e. the grounding-dino-tiny
  architecture (Swin-T + bert-base, 172 M parameters), with the real 800/1333 px resize;
  GPU benchmarks.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal, NamedTuple

# The model hard-codes these ids as [CLS], [SEP], '.' and '?' (transformers'
# SPECIAL_TOKENS), so any vocabulary we build must place those tokens at exactly these
# positions.
_FIXED_TOKENS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
_PERIOD_ID, _QUESTION_ID = 1012, 1029

# Whole words that the tests and demo prompts use, so that they tokenise to one token
# each.
_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "with",
    "in",
    "on",
    "photo",
    "person",
    "people",
    "man",
    "woman",
    "cat",
    "dog",
    "car",
    "bus",
    "truck",
    "bicycle",
    "can",
    "aluminum",
    "shiny",
    "metal",
    "drink",
    "soda",
    "bottle",
    "cup",
    "coffee",
    "mug",
    "rocket",
    "astronaut",
    "horse",
    "tree",
    "flower",
    "chair",
    "table",
    "window",
    "door",
    "sky",
    "cloud",
    "face",
    "hand",
    "ball",
    "bird",
    "fish",
    "plate",
    "food",
]

Size = Literal["tiny", "mid", "full"]


def build_vocab() -> list[str]:
    """A BERT WordPiece vocabulary with the special tokens where Grounding DINO expects
    them.

    Letters and '##' letter pieces make every lowercase ASCII word tokenisable, so long
    prompts (e.g. a class list over the 256-token limit) can be built from arbitrary
    words.
    """
    size = 1100
    vocab = [f"[unused{i}]" for i in range(size)]
    for token_id, token in _FIXED_TOKENS.items():
        vocab[token_id] = token
    vocab[_PERIOD_ID] = "."
    vocab[_QUESTION_ID] = "?"
    pieces = (
        list(string.ascii_lowercase)
        + [f"##{c}" for c in string.ascii_lowercase + string.digits]
        + list(string.digits)
        + list(",:;!-'\"()/&")
        + list(_WORDS)
    )
    free = (i for i in range(200, size) if i not in (_PERIOD_ID, _QUESTION_ID))
    for token_id, piece in zip(free, dict.fromkeys(pieces), strict=False):
        vocab[token_id] = piece
    return vocab


class _SmallSize(NamedTuple):
    """A small Grounding DINO architecture, as positional tuples to keep the table
    short."""

    swin: tuple[int, list[int], list[int]]  # embed_dim, depths, num_heads
    bert: tuple[int, int, int, int]  # hidden, layers, attention heads, intermediate
    detector: tuple[int, ...]  # the _DETECTOR_FIELDS of GroundingDinoConfig
    edges: tuple[int, int]  # the image processor's shortest and longest edge


_DETECTOR_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "num_queries",
    "max_text_len",
)
# The small architectures: "mid" for CPU benchmarks, "tiny" for tests.
_SMALL_SIZES: dict[str, _SmallSize] = {
    "mid": _SmallSize(
        (48, [1, 1, 2, 1], [2, 2, 4, 4]),
        (128, 2, 2, 256),
        (128, 3, 3, 512, 512, 8, 8, 300, 256),
        (480, 800),
    ),
    "tiny": _SmallSize(
        (16, [1, 1, 1, 1], [1, 1, 1, 1]),
        (32, 1, 2, 64),
        (32, 1, 2, 64, 64, 2, 2, 30, 64),
        (128, 192),
    ),
}


def _small_config(size: _SmallSize, vocab_size: int, config_class: Any) -> Any:
    """The ``config_class`` (GroundingDinoConfig, MMGroundingDinoConfig) of a small
    architecture."""
    from transformers import BertConfig, SwinConfig

    embed_dim, depths, swin_heads = size.swin
    hidden, layers, bert_heads, intermediate = size.bert
    return config_class(
        backbone_config=SwinConfig(
            embed_dim=embed_dim,
            depths=depths,
            num_heads=swin_heads,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=bert_heads,
            intermediate_size=intermediate,
        ),
        **dict(zip(_DETECTOR_FIELDS, size.detector, strict=True)),
    )


Variant = Literal["grounding-dino", "mm-grounding-dino"]
# The config and model classes of each variant (the same architecture, retrained).
_VARIANTS = {
    "grounding-dino": ("GroundingDinoConfig", "GroundingDinoForObjectDetection"),
    "mm-grounding-dino": ("MMGroundingDinoConfig", "MMGroundingDinoForObjectDetection"),
}


def save_random_grounding_dino(
    path: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    variant: Variant = "grounding-dino",
) -> Path:
    """Build a randomly initialised Grounding DINO (or MM Grounding DINO, as
    ``variant``) of ``size`` and save model + processor."""
    import torch
    import transformers
    from transformers import (
        BertTokenizerFast,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    config_name, model_name = _VARIANTS[variant]
    config_class = getattr(transformers, config_name)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(path, do_lower_case=True)

    if size == "full":
        config = config_class()
        config.text_config.vocab_size = max(config.text_config.vocab_size, len(vocab))
        image_size = {"shortest_edge": 800, "longest_edge": 1333}
    else:
        small = _SMALL_SIZES[size]
        config = _small_config(small, len(vocab), config_class)
        image_size = {"shortest_edge": small.edges[0], "longest_edge": small.edges[1]}

    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size=image_size),
        tokenizer=tokenizer,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def main() -> None:
    """``python -m model_loaders.random_init DIR [--size tiny|mid|full]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--size", choices=("tiny", "mid", "full"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=tuple(_VARIANTS), default="grounding-dino")
    args = parser.parse_args()
    print(
        save_random_grounding_dino(
            args.directory, size=args.size, seed=args.seed, variant=args.variant
        )
    )


if __name__ == "__main__":
    main()
