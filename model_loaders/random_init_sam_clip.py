"""Randomly initialised Segment Anything and open_clip checkpoints, saved like real
ones.

Weights cannot be downloaded on CI or offline machines, so tests and benchmarks save a
random model in exactly the form a user's real checkpoint has and load it through the
same code path:
- SAM: a ``.pth`` state dict, as Meta publishes them (``--sam-checkpoint PATH``);
- open_clip: a ``local-dir:`` folder with ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` (``--model local-dir:PATH``); open_clip's BPE
  vocabulary ships inside the package, so its tokenizer needs no download.

Two small SAM architectures exist besides Meta's vit_b/vit_l/vit_h (which
``segment_anything.sam_model_registry`` builds):
- ``vit_tiny``: 256 px input, a 32-wide 2-block encoder and a 32-wide decoder; for
  tests.
- ``vit_mid``: Meta's 1024 px input and full-size prompt encoder and mask decoder (so
  decoder timings equal real SAM's), with a 192-wide 4-block encoder that runs in about
  a second on CPU instead of 12-45 s; for benchmarks.
A random model's compute equals a trained one's of the same architecture; its labels are
meaningless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

SMALL_SAM_TYPES = ("vit_tiny", "vit_mid")
ClipSize = Literal["tiny", "mid", "ViT-B-32"]


@dataclass(frozen=True)
class _SamShape:
    image_size: int
    encoder_width: int
    encoder_depth: int
    encoder_heads: int
    global_attention: tuple[int, ...]
    window_size: int
    prompt_width: int
    decoder_mlp: int
    decoder_heads: int


_SAM_SHAPES = {
    "vit_tiny": _SamShape(256, 32, 2, 2, (1,), 4, 32, 64, 2),
    "vit_mid": _SamShape(1024, 192, 4, 3, (1, 3), 14, 256, 2048, 8),
}

# A tiny CLIP: 64 px images, 2 layers per tower, 16-token context.
_TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
    },
}
# Mid: a scaled-down ViT-B-32 (224 px, 4+4 layers) for CPU benchmarks.
_MID_CLIP = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 384, "patch_size": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 256,
        "heads": 4,
        "layers": 4,
    },
}


def build_small_sam(model_type: str):
    """A randomly initialised ``segment_anything`` Sam of a small architecture.

    Built from the same parts and in the same way as ``segment_anything.build_sam``,
    with the sizes of ``model_type`` (see the module docstring).
    """
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    shape = _SAM_SHAPES[model_type]
    patch_size = 16
    embedding_size = shape.image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=shape.encoder_depth,
            embed_dim=shape.encoder_width,
            img_size=shape.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=shape.encoder_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=shape.global_attention,
            window_size=shape.window_size,
            out_chans=shape.prompt_width,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=shape.prompt_width,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(shape.image_size, shape.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=shape.prompt_width,
                mlp_dim=shape.decoder_mlp,
                num_heads=shape.decoder_heads,
            ),
            transformer_dim=shape.prompt_width,
            iou_head_depth=3,
            iou_head_hidden_dim=shape.prompt_width,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def save_random_sam(
    path: str | Path, model_type: str = "vit_tiny", seed: int = 0
) -> Path:
    """Save a random SAM of ``model_type`` as a ``.pth`` state dict; returns the file.

    ``model_type`` is vit_tiny, vit_mid, or one of Meta's vit_b/vit_l/vit_h (the full
    architecture with random weights, for GPU benchmarks).
    """
    import torch

    torch.manual_seed(seed)
    if model_type in SMALL_SAM_TYPES:
        sam = build_small_sam(model_type)
    else:
        from segment_anything import sam_model_registry

        sam = sam_model_registry[model_type]()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def save_random_open_clip(
    path: str | Path, size: ClipSize = "tiny", seed: int = 0
) -> Path:
    """Save a random open_clip model as a ``local-dir:`` folder; returns the folder.

    ``size`` is tiny (tests), mid (CPU benchmarks) or ViT-B-32 (open_clip's own config).
    Load it with ``--model local-dir:PATH``.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    if size == "tiny":
        model_cfg = _TINY_CLIP
    elif size == "mid":
        model_cfg = _MID_CLIP
    else:
        model_cfg = open_clip.get_model_config(size)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg).eval()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    return path


def main() -> None:
    """``python -m model_loaders.random_init_sam_clip sam|clip PATH [--size ...]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("sam", "clip"))
    parser.add_argument("path", help="SAM: the .pth file; CLIP: the folder.")
    parser.add_argument(
        "--size",
        default=None,
        help="SAM: vit_tiny (default), vit_mid, vit_b, vit_l, vit_h; "
        "CLIP: tiny (default), mid, ViT-B-32.",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.kind == "sam":
        print(save_random_sam(args.path, args.size or "vit_tiny", seed=args.seed))
    else:
        print(save_random_open_clip(args.path, args.size or "tiny", seed=args.seed))


if __name__ == "__main__":
    main()
