"""Randomly initialised SAM 3 checkpoints, saved like real ones (``save_pretrained``).

``facebook/sam3`` is gated and nothing can be downloaded on CI or offline machines, so
tests and benchmarks save a random ``Sam3Model`` and its ``Sam3Processor`` into a folder
of exactly the form a downloaded checkpoint has, and load it through the same code path
(``--model DIR``).

The processor's tokenizer is CLIP's BPE. open_clip ships that vocabulary inside its
package (``bpe_simple_vocab_16e6.txt.gz``), so a ``CLIPTokenizer`` is rebuilt from it
offline, exactly as open_clip's ``SimpleTokenizer`` builds its table: 256 byte tokens,
the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>`` (49408 tokens, the ids of the real checkpoint).

Sizes:
- ``tiny``: 112 px input, 32-wide 2-layer ViT, 2-layer CLIP text tower, 1-layer DETR
  encoder and decoder with 20 queries; builds, saves and runs in well under a second.
  For tests.
- ``mid``: the real 1008 px input and full-size DETR (256 wide, 6+6 layers, 200
  queries) and mask decoder, so everything after the vision encoder costs what the real
  model's does, with a 4-layer 256-wide ViT and a 4-layer text tower; for CPU
  benchmarks.
A random model's compute equals a trained one's of the same architecture; its labels are
meaningless.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

Sam3Size = Literal["tiny", "mid"]
TEXT_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens


def _sizes(size: Sam3Size) -> dict:
    if size == "tiny":
        return {
            "image_size": 112,
            "vit": {"hidden_size": 32, "layers": 2, "heads": 2, "window": 4},
            "global_attn": [1],
            "fpn": 32,
            "text": {"hidden_size": 32, "layers": 2, "heads": 2, "ffn": 64},
            "detr": {"hidden_size": 32, "heads": 2, "ffn": 64, "layers": 1},
            "queries": 20,
        }
    return {
        "image_size": 1008,
        "vit": {"hidden_size": 256, "layers": 4, "heads": 4, "window": 24},
        "global_attn": [1, 3],
        "fpn": 256,
        "text": {"hidden_size": 256, "layers": 4, "heads": 4, "ffn": 1024},
        "detr": {"hidden_size": 256, "heads": 8, "ffn": 2048, "layers": 6},
        "queries": 200,
    }


def build_config(size: Sam3Size = "tiny"):
    """A ``Sam3Config`` of a small architecture (see the module docstring)."""
    from transformers import Sam3Config

    s = _sizes(size)
    patch = 14
    grid = s["image_size"] // patch
    vit = s["vit"]
    detr = s["detr"]
    text = s["text"]
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": vit["hidden_size"],
                "intermediate_size": vit["hidden_size"] * 4,
                "num_hidden_layers": vit["layers"],
                "num_attention_heads": vit["heads"],
                "image_size": s["image_size"],
                "patch_size": patch,
                "window_size": vit["window"],
                "global_attn_indexes": s["global_attn"],
                "pretrain_image_size": min(336, s["image_size"]),
            },
            "fpn_hidden_size": s["fpn"],
            "backbone_feature_sizes": [
                [grid * 4, grid * 4],
                [grid * 2, grid * 2],
                [grid, grid],
            ],
        },
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": 49408,
            "hidden_size": text["hidden_size"],
            "intermediate_size": text["ffn"],
            "projection_dim": text["hidden_size"],
            "num_hidden_layers": text["layers"],
            "num_attention_heads": text["heads"],
            "max_position_embeddings": TEXT_LENGTH,
        },
        geometry_encoder_config={
            "hidden_size": detr["hidden_size"],
            "num_layers": 1,
            "num_attention_heads": detr["heads"],
            "intermediate_size": detr["ffn"],
        },
        detr_encoder_config={
            "hidden_size": detr["hidden_size"],
            "num_layers": detr["layers"],
            "num_attention_heads": detr["heads"],
            "intermediate_size": detr["ffn"],
        },
        detr_decoder_config={
            "hidden_size": detr["hidden_size"],
            "num_layers": detr["layers"],
            "num_queries": s["queries"],
            "num_attention_heads": detr["heads"],
            "intermediate_size": detr["ffn"],
        },
        mask_decoder_config={
            "hidden_size": detr["hidden_size"],
            "num_attention_heads": detr["heads"],
        },
    )


def clip_tokenizer():
    """CLIP's BPE tokenizer, rebuilt offline from open_clip's bundled vocabulary."""
    import importlib.resources

    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=[tuple(merge.split()) for merge in merges],
    )
    tokenizer.model_max_length = TEXT_LENGTH
    return tokenizer


def build_processor(size: Sam3Size = "tiny"):
    """A ``Sam3Processor`` for ``size``: the real image steps at its input size."""
    from transformers import Sam3ImageProcessor, Sam3Processor

    image_size = _sizes(size)["image_size"]
    image_processor = Sam3ImageProcessor(
        size={"height": image_size, "width": image_size}
    )
    return Sam3Processor(image_processor=image_processor, tokenizer=clip_tokenizer())


def save_random_sam3(
    path: str | Path,
    size: Sam3Size = "tiny",
    seed: int = 0,
    *,
    score_scale: float = 1.0,
) -> Path:
    """Save a random SAM 3 of ``size`` and its processor into folder ``path``.

    A random model scores every (query, prompt) within 0.25 +- 0.003; ``score_scale``
    multiplies the query projection of the score head, which spreads the scores (100:
    about 0.05-0.41) so that a confidence floor keeps some detections and drops others,
    far from the floor. Returns the folder.
    """
    import torch
    from transformers import Sam3Model

    torch.manual_seed(seed)
    model = Sam3Model(build_config(size)).eval()
    if score_scale != 1.0:
        with torch.no_grad():
            model.dot_product_scoring.query_proj.weight *= score_scale
            model.dot_product_scoring.query_proj.bias *= score_scale
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    build_processor(size).save_pretrained(path)
    return path


def main() -> None:
    """``python -m model_loaders.random_init_sam3 PATH [--size tiny|mid]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="The folder to save into.")
    parser.add_argument("--size", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_random_sam3(args.path, args.size, seed=args.seed))


if __name__ == "__main__":
    main()
