"""FLOPs of each SAM 3 component for one image and one text prompt, without running it.

Why: a benchmark on a random mid-size SAM 3 only says something about the real model
if the mid model spends its compute in the same proportions. Sharing one vision pass
across a prompt list (the ``sam3`` backend) saves exactly the vision encoder's share, so
the speed-up over one full forward per (image, class) follows from these proportions:

    per image, N classes:  naive  N x (V + T + D)     shared  V + N x D

(V vision encoder + FPN neck, T text encoder, D everything per prompt: DETR encoder,
DETR decoder, scoring, mask decoder; the pipeline encodes each prompt once per
ontology, so its T is spread over every image and left out). The script prints
``N (V + T + D) / (V + N D)`` as the b/c that FLOPs predict.

The model is built on PyTorch's meta device and run on fake tensors
(``FakeTensorMode``) under ``torch.utils.flop_counter.FlopCounterMode``: the full-size
``Sam3Config()`` (a 32-layer 1024-wide ViT at 1008 px) is counted in seconds, with no
weights in memory. Counted are the matrix products and convolutions (attention runs as
eager matmuls so that it is counted); element-wise work, normalisation and resampling
are not, so CPU time shares differ somewhat from FLOP shares.

    .venv/bin/python benchmarks/sam3_flops.py                 # full, mid and tiny
    .venv/bin/python benchmarks/sam3_flops.py --sizes full mid --classes 5
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gdino_bench_common as common
from gdino_bench_report import format_table

# Rows of the table: a label and the Sam3Model submodules whose FLOPs it sums.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision: ViT backbone": ("vision_encoder.backbone",),
    "vision: FPN neck": ("vision_encoder.neck",),
    "text encoder (+ projection)": ("text_encoder", "text_projection"),
    "DETR encoder": ("detr_encoder",),
    "DETR decoder (+ box head)": ("detr_decoder",),
    "scoring": ("dot_product_scoring",),
    "mask decoder": ("mask_decoder",),
}
VISION = ("vision: ViT backbone", "vision: FPN neck")
TEXT = ("text encoder (+ projection)",)
TEXT_TOKENS = 32  # Sam3Processor pads every prompt to 32 tokens


def sam3_config(size: str) -> Any:
    """``full`` is transformers' default ``Sam3Config()`` (the released model's
    architecture); ``mid``/``tiny`` are the project's random benchmark/test models."""
    if size == "full":
        from transformers import Sam3Config

        return Sam3Config()
    from model_loaders.random_init_sam3 import build_config

    return build_config(size)


def component_flops(config: Any) -> dict[str, int]:
    """FLOPs per component (``COMPONENTS``) of one forward: one image, one prompt.

    Also ``total``: everything the counter saw (the rows plus anything unlisted).
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Sam3Model

    config._attn_implementation = "eager"  # matmuls the counter sees
    with torch.device("meta"):
        model = Sam3Model(config).eval()
    vit = config.vision_config.backbone_config
    _fix_decoder_grid(model, vit.image_size // vit.patch_size)
    counter = FlopCounterMode(display=False, depth=None)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        pixels = torch.empty(1, 3, vit.image_size, vit.image_size)
        input_ids = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
        mask = torch.ones(1, TEXT_TOKENS, dtype=torch.long)
        with torch.inference_mode(), counter:
            model(pixel_values=pixels, input_ids=input_ids, attention_mask=mask)
    counts = {
        name: sum(per_op.values()) for name, per_op in counter.get_flop_counts().items()
    }
    flops = {
        label: sum(counts.get(f"Sam3Model.{module}", 0) for module in modules)
        for label, modules in COMPONENTS.items()
    }
    # Sam3Model.forward runs detr_decoder.box_head itself on every decoder layer's
    # output, outside detr_decoder, so the counter adds that call to no row. Anything
    # beyond it would be work this table does not know about.
    outside = counts["Global"] - sum(flops.values())
    if not 0 <= outside <= counts.get("Sam3Model.detr_decoder.box_head", 0):
        raise RuntimeError(f"{outside} FLOPs of the forward are in no component")
    flops["DETR decoder (+ box head)"] += outside
    flops["total"] = counts["Global"]
    return flops


def _fix_decoder_grid(model: Any, grid: int) -> None:
    """Give the DETR decoder its feature-map size as ints.

    The decoder reads the size from a tensor (``spatial_shapes``) to build coordinate
    ramps for its box position bias; a fake tensor has no value to read. The ramps
    cost no FLOPs; the size is the ViT's patch grid (the stride-1 FPN level).
    """
    import torch

    def coords(height: Any, width: Any, dtype: Any, device: Any) -> tuple[Any, Any]:
        del height, width
        ramp = torch.arange(0, grid, device=device, dtype=dtype) / grid
        return ramp, ramp.clone()

    model.detr_decoder._get_coords = coords


def shares(flops: dict[str, int]) -> dict[str, float]:
    """Vision, text and per-prompt (everything else) fractions of the total."""
    total = flops["total"]
    vision = sum(flops[k] for k in VISION)
    text = sum(flops[k] for k in TEXT)
    return {
        "vision": vision / total,
        "text": text / total,
        "per_prompt": (total - vision - text) / total,
    }


def predicted_b_over_c(flops: dict[str, int], classes: int) -> float:
    """Naive per-(image, class) FLOPs over shared-vision FLOPs, per image."""
    vision = sum(flops[k] for k in VISION)
    text = sum(flops[k] for k in TEXT)
    per_prompt = flops["total"] - vision - text
    return classes * flops["total"] / (vision + classes * per_prompt)


def report(sizes: Sequence[str], classes: int) -> dict[str, Any]:
    """Count every size, print the table and the predicted b/c; return the figures."""
    results = {size: component_flops(sam3_config(size)) for size in sizes}
    headers = ["component"]
    for size in sizes:
        headers += [f"{size} GFLOP", f"{size} %"]
    rows = []
    for label in [*COMPONENTS, "total"]:
        row: list[Any] = [label]
        for size in sizes:
            flops = results[size]
            row += [
                f"{flops[label] / 1e9:.2f}",
                f"{100 * flops[label] / flops['total']:.1f}",
            ]
        rows.append(row)
    print("FLOPs of one forward, one image and one text prompt (matmuls and convs):")
    print(format_table(headers, rows))
    summary = {}
    print()
    for size in sizes:
        share = shares(results[size])
        predicted = predicted_b_over_c(results[size], classes)
        summary[size] = {
            "gflops": {k: round(v / 1e9, 3) for k, v in results[size].items()},
            "shares": {k: round(v, 4) for k, v in share.items()},
            f"predicted_b_over_c_{classes}_classes": round(predicted, 3),
        }
        print(
            f"{size}: vision {100 * share['vision']:.1f} %, text "
            f"{100 * share['text']:.2f} %, "
            f"per prompt {100 * share['per_prompt']:.1f} %; "
            f"FLOP-predicted b/c at {classes} classes = {predicted:.2f}"
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=("full", "mid", "tiny"),
        default=["full", "mid", "tiny"],
    )
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    common.put_repo_on_path()
    common.quiet_libraries()
    summary = report(args.sizes, args.classes)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
