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
- ``mid``: for CPU benchmarks, a SAM 3 that spends its compute in the real model's
  proportions, at under a fifth of its FLOPs. Sharing one vision pass across prompts
  saves exactly the vision share, so a benchmark model must keep that share to say
  anything about the real model. ``benchmarks/sam3_flops.py`` counts one (image, prompt)
  forward of the real model (transformers' ``Sam3Config()``: 1008 px, 32-layer
  1024-wide ViT, 24-layer 1024-wide CLIP text tower): 6.05 TFLOP, vision (ViT + FPN
  neck) 92.7 %, text 0.3 %, per prompt (DETR encoder and decoder, scoring, mask
  decoder) 6.9 %. ``mid`` halves the input to 504 px (36 x 36 patches; attention
  windows of 12, so that each side still has 3 windows as 24 of 72 has), which cuts
  the per-prompt modules about 5.5-fold (their linear layers 4-fold, the DETR
  encoder's global attention 16-fold); those modules are the real ones (256 wide, 6+6
  layers, 200 queries, the same mask decoder and FPN width). The ViT keeps the real
  layer shape (1024 wide, 16 heads, MLP 4736, global attention every 8th layer) with
  26 of its 32 layers, and the text tower its width with 4 of its 24 layers, which
  restores the shares: 1.11 TFLOP, vision 92.6 %, text 0.3 %, per prompt 7.1 %.
  502 M parameters (2 GB in float32); on 2 shared CPU threads a vision pass takes
  10-25 s and one prompt 1-3 s.
- ``full``: the real architecture (transformers' ``Sam3Config()`` defaults, 1008 px,
  848 M parameters), for the GPU script.
A random model's compute equals a trained one's of the same architecture; its labels are
meaningless.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

Sam3Size = Literal["tiny", "mid", "full"]
FULL_IMAGE_SIZE = 1008  # facebook/sam3's input
TEXT_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens
MID_VIT_LAYERS = 26  # of the real 32: the depth that restores the vision share
MID_TEXT_LAYERS = 4  # of the real 24: the depth that restores the text share


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
    return _MID


# The real model's architecture at half its input, with the ViT and text depths that
# restore its FLOP shares (see the module docstring; benchmarks/sam3_flops.py).
_MID = {
    "image_size": 504,
    "vit": {
        "hidden_size": 1024,
        "layers": MID_VIT_LAYERS,
        "heads": 16,
        "window": 12,
        "ffn": 4736,
        "pretrain_image_size": 168,  # 12 patches = one window, as 336 px is at 1008
    },
    "global_attn": [i for i in range(MID_VIT_LAYERS) if i % 8 == 7],
    "fpn": 256,
    "text": {"hidden_size": 1024, "layers": MID_TEXT_LAYERS, "heads": 16, "ffn": 4096},
    "detr": {"hidden_size": 256, "heads": 8, "ffn": 2048, "layers": 6},
    "queries": 200,
}


def build_config(size: Sam3Size = "tiny"):
    """A ``Sam3Config`` of a small architecture (see the module docstring)."""
    from transformers import Sam3Config

    if size == "full":  # transformers' defaults are facebook/sam3's architecture
        return Sam3Config()
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
                "intermediate_size": vit.get("ffn", vit["hidden_size"] * 4),
                "num_hidden_layers": vit["layers"],
                "num_attention_heads": vit["heads"],
                "image_size": s["image_size"],
                "patch_size": patch,
                "window_size": vit["window"],
                "global_attn_indexes": s["global_attn"],
                "pretrain_image_size": vit.get(
                    "pretrain_image_size", min(336, s["image_size"])
                ),
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

    image_size = FULL_IMAGE_SIZE if size == "full" else _sizes(size)["image_size"]
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
    parser.add_argument("--size", choices=("tiny", "mid", "full"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_random_sam3(args.path, args.size, seed=args.seed))


if __name__ == "__main__":
    main()
