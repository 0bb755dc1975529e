"""Training throughput of ``autolabel train``: images per second through one epoch of
the real training session (``tasks.training.session``: images read from disk, the
base's image processor with targets, forward, loss, backward, AdamW step), and the val
measurement (mAP via COCOeval) per second.

The data is an output folder of coloured squares with exact boxes, written through the
project's label table and COCO export (``tests/tasks/training/synthetic.py``). Weights
are random (nothing can be downloaded here):
- CPU (default): the tiny RT-DETR of the tests (~0.2 M parameters) at 64 px;
- ``--gpu``: a full-size RT-DETRv2 from its config (``--arch r18``: the
  PekingU/rtdetr_v2_r18vd architecture, 20 M parameters; ``r50``: r50vd, 43 M) at
  640 px with bfloat16 autocast, on ``--device cuda``. Needs the project's
  dependencies (``pip install -e .``) on the GPU machine.

The first epoch is a warm-up (not timed); the figure is the best of ``--repeats``
further epochs (the model keeps training: throughput does not depend on weights).

    .venv/bin/python benchmarks/bench_train.py                      # CPU, tiny
    .venv/bin/python benchmarks/bench_train.py --images 32 --repeats 1
    python benchmarks/bench_train.py --gpu --arch r18 --batch-size 16  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from gdino_bench_common import put_repo_on_path, quiet_libraries, run_in_scratch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="Full-size RT-DETRv2.")
    parser.add_argument("--arch", choices=("r18", "r50"), default="r18")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    gpu = args.gpu
    args.images = args.images or (256 if gpu else 96)
    args.batch_size = args.batch_size or (16 if gpu else 8)
    args.image_size = args.image_size or (640 if gpu else 64)
    args.device = args.device or ("cuda" if gpu else "cpu")
    args.dtype = args.dtype or ("auto" if gpu else "float32")
    put_repo_on_path()
    quiet_libraries()
    return run_in_scratch(args, run_benchmark, prefix="bench-train-")


def run_benchmark(args: argparse.Namespace, scratch: Path) -> dict:
    import torch

    from tasks.training.data import read_training_data
    from tasks.training.session import build_session
    from tasks.training.settings import TrainSettings
    from tests.tasks.training.synthetic import save_tiny_rt_detr, write_labeled_out

    out = scratch / "out"
    write_labeled_out(out, args.images, size=args.image_size)
    if args.gpu:
        base = save_rt_detr_v2(scratch / "base", args.arch, args.image_size)
    else:
        base = save_tiny_rt_detr(scratch / "base", image_size=args.image_size)
    settings = TrainSettings(
        base=base,
        out_model=str(scratch / "model"),
        epochs=args.repeats + 1,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        split="train=0.9,val=0.1",
        workers=min(8, os.cpu_count() or 1) if args.gpu else 0,
    )
    data = read_training_data(out, settings.split)
    session = build_session(data, settings)
    params = sum(p.numel() for p in session.model.parameters())
    session.train_epoch(1, on_batch=lambda n: None)  # warm-up
    train_rates = []
    for epoch in range(2, args.repeats + 2):
        _sync(session.device)
        start = time.perf_counter()
        session.train_epoch(epoch, on_batch=lambda n: None)
        _sync(session.device)
        train_rates.append(len(data.train) / (time.perf_counter() - start))
    start = time.perf_counter()
    session.measure()
    val_rate = len(data.val) / (time.perf_counter() - start)
    report = {
        "mode": "gpu" if args.gpu else "cpu",
        "architecture": f"rt_detr_v2 {args.arch}" if args.gpu else "tiny rt_detr",
        "parameters": params,
        "device": str(session.device),
        "autocast": str(session.amp_dtype),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "train_images_per_s_best": round(max(train_rates), 2),
        "train_images_per_s_all": [round(r, 2) for r in train_rates],
        "val_images_per_s": round(val_rate, 2),
        "torch_threads": torch.get_num_threads(),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if session.device.type == "cuda"
        else None,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))
    return report


def save_rt_detr_v2(path: Path, arch: str, image_size: int) -> str:
    """A full-size RT-DETRv2 (r18vd or r50vd backbone) with random weights."""
    import torch
    from transformers import (
        RTDetrImageProcessor,
        RTDetrResNetConfig,
        RTDetrV2Config,
        RTDetrV2ForObjectDetection,
    )

    torch.manual_seed(0)
    if arch == "r18":
        backbone = RTDetrResNetConfig(
            depths=[2, 2, 2, 2],
            hidden_sizes=[64, 128, 256, 512],
            layer_type="basic",
            out_features=["stage2", "stage3", "stage4"],
        )
        channels, decoder_layers = [128, 256, 512], 3
    else:
        backbone = RTDetrResNetConfig(out_features=["stage2", "stage3", "stage4"])
        channels, decoder_layers = [512, 1024, 2048], 6
    config = RTDetrV2Config(
        backbone_config=backbone,
        encoder_in_channels=channels,
        decoder_layers=decoder_layers,
        use_pretrained_backbone=False,
    )
    RTDetrV2ForObjectDetection(config).save_pretrained(path)
    RTDetrImageProcessor(
        size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return str(path)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
