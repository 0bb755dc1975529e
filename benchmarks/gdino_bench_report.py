"""What the benchmarks print: environment, model summary, ratios, tables, reports."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from typing import Any

from gdino_bench_timing import Measurement


def model_summary(model: Any, processor: Any) -> dict[str, Any]:
    """The architecture facts a reader needs to compare figures between runs."""
    config = model.config
    backbone = config.backbone_config
    text = config.text_config
    size = processor.image_processor.size
    size_items = vars(size).items() if hasattr(size, "__dict__") else dict(size).items()
    return {
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "backbone": f"Swin dim {backbone.embed_dim} depths {list(backbone.depths)}",
        "text_encoder": f"BERT dim {text.hidden_size} layers {text.num_hidden_layers}",
        "d_model": config.d_model,
        "queries": config.num_queries,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "max_text_len": config.max_text_len,
        "processor_resize": {k: v for k, v in size_items if v is not None},
    }


def environment(device: Any) -> dict[str, Any]:
    """Versions, threads, load and accelerator, printed beside every figure."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if getattr(device, "type", str(device)) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def ratio_lines(
    raw: Measurement | None,
    pipeline: Measurement | None,
    naive: Measurement | None,
    n_classes: int,
) -> tuple[dict[str, float], list[str]]:
    """b/a and b/c (best of the repeats, median in brackets) against the targets.

    Targets from the issue: b/a >= 0.9 (the pipeline keeps the model busy) and
    b/c >= classes x 0.8 (one joint pass instead of one pass per class).
    """
    ratios: dict[str, float] = {}
    lines = []
    targets = (("b/a", raw, 0.9), ("b/c", naive, n_classes * 0.8))
    for name, other, target in targets:
        if pipeline is None or other is None:
            lines.append(f"{name}: not measured")
            continue
        best = pipeline.best_ips / other.best_ips
        median = pipeline.median_ips / other.median_ips
        ratios[name] = round(best, 3)
        ratios[f"{name}_median"] = round(median, 3)
        verdict = "met" if best >= target else "MISSED"
        lines.append(
            f"{name} = {best:.2f} (median {median:.2f}); "
            f"target >= {target:.2f}: {verdict}"
        )
    return ratios, lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (Markdown-compatible), numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        padded = [
            value.rjust(width) if _is_number(value) else value.ljust(width)
            for value, width in zip(row, widths, strict=True)
        ]
        lines.append("| " + " | ".join(padded) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.1f}"
    return "-" if value is None else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def print_cpu_report(
    env: dict[str, Any],
    config: dict[str, Any],
    measurements: dict[str, Measurement],
    ratio_text: list[str],
) -> None:
    """``bench_grounding_dino.py``'s report: environment, config, tables, ratios."""
    print("\nenvironment:")
    for key, value in env.items():
        print(f"  {key}: {value}")
    print("config (model already loaded and warm; load time excluded from all modes):")
    for key, value in config.items():
        print(f"  {key}: {value}")
    rows = [
        [
            m.mode,
            m.images,
            m.best_wall,
            m.median_wall,
            m.best_ips,
            m.median_ips,
            round(sum(m.cpu_utils) / len(m.cpu_utils), 2),
            m.detections_per_image,
        ]
        for m in measurements.values()
    ]
    headers = [
        "mode",
        "images",
        "best s",
        "median s",
        "img/s best",
        "img/s median",
        "cpu util",
        "boxes/img",
    ]
    print("\n" + format_table(headers, rows))
    print("\n" + "\n".join(ratio_text))
    print("\nper repeat (the modes ran back to back; trust repeats with cpu util near")
    print(f"the thread count, {env['torch_threads']} here):")
    print(format_table(*per_repeat(measurements)))


def per_repeat(
    measurements: dict[str, Measurement],
) -> tuple[list[str], list[list[Any]]]:
    """Seconds and ratios of each repeat: the modes of one repeat shared one load.

    (c) may be missing (``--skip-naive``): its columns are left out.
    """
    keys = [key for key in "abc" if key in measurements]
    timed = [measurements[key] for key in keys]
    headers = ["repeat", *(f"{key} s" for key in keys), "lowest cpu util", "b/a"]
    if "c" in keys:
        headers.append("b/c")
    rows = []
    for index, walls in enumerate(zip(*(m.walls for m in timed), strict=True)):
        utils = [m.cpu_utils[index] for m in timed]
        ips = {k: m.images / w for k, m, w in zip(keys, timed, walls, strict=True)}
        row = [index + 1, *walls, min(utils), ips["b"] / ips["a"]]
        if "c" in keys:
            row.append(ips["b"] / ips["c"])
        rows.append(row)
    return headers, rows


def print_gpu_report(
    env: dict[str, Any],
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    n_classes: int,
) -> None:
    """``gpu_grounding_dino.py``'s report: config, one row per (dtype, batch size)."""
    print("\nconfig (models loaded and warm before timing; load time excluded):")
    for key, value in config.items():
        print(f"  {key}: {value}")
    headers = [
        "dtype",
        "batch",
        "a img/s",
        "b img/s",
        "c img/s",
        "b/a",
        "b/c",
        "peak GiB",
        "note",
    ]
    table = [
        [
            row["dtype"],
            row["batch_size"],
            best_ips_of(row.get("a")),
            best_ips_of(row.get("b")),
            best_ips_of(row.get("c")),
            row.get("b/a"),
            row.get("b/c"),
            row.get("peak_gpu_gib"),
            row.get("note", ""),
        ]
        for row in rows
    ]
    print(f"\n{env.get('gpu', env['device'])}, best of {config['repeats']} repeats:")
    print(format_table(headers, table))
    print(f"targets: b/a >= 0.90, b/c >= {n_classes} x 0.8 = {n_classes * 0.8:.2f}")


def best_ips_of(measurement: dict[str, Any] | None) -> float | None:
    return measurement["images_per_s_best"] if measurement else None
