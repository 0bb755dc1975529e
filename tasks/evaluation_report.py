"""``OUT/evaluation/``: an ``Evaluation`` as metrics.json, evaluation.md and one
precision-recall curve per class (PNG, drawn with PIL: no plotting dependency).

Kept apart from ``tasks.evaluate`` so measuring and presenting change separately: the
markdown and the PNGs can be reworded or redrawn without touching a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.evaluate import Evaluation
from tasks.markdown import markdown_cell, markdown_code

LISTED = 50  # names listed in evaluation.md per kind (metrics.json lists all)


def evaluation_dir(out: str | Path) -> Path:
    """Where the files of ``write_evaluation`` go; the CLI names it when done."""
    return Path(out) / "evaluation"


def class_slug(name: str) -> str:
    """A file-name-safe form of a class name (``pr-<slug>.png``)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"


def curve_files(classes: Sequence[str]) -> dict[str, str]:
    """Each class's PR-curve file name, unique even where two names slug alike."""
    names: dict[str, str] = {}
    for name in classes:
        base = f"pr-{class_slug(name)}"
        candidate, n = base, 2
        while f"{candidate}.png" in names.values():
            candidate, n = f"{base}-{n}", n + 1
        names[name] = f"{candidate}.png"
    return names


def write_evaluation(out: str | Path, evaluation: Evaluation) -> list[Path]:
    """Write metrics.json, evaluation.md and the PR curves; the paths written."""
    folder = evaluation_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("pr-*.png"):
        stale.unlink()
    written = []
    for name, file_name in curve_files(list(evaluation.pr_curves)).items():
        curve = evaluation.pr_curves[name]
        path = folder / file_name
        draw_pr_curve(
            curve["recall"],
            curve["precision"],
            title=_curve_title(evaluation, name),
            path=path,
        )
        written.append(path)
    metrics = folder / "metrics.json"
    metrics.write_text(json.dumps(asdict(evaluation), indent=2), encoding="utf-8")
    report = folder / "evaluation.md"
    report.write_text(render_evaluation_markdown(evaluation), encoding="utf-8")
    return [metrics, report, *written]


def _curve_title(evaluation: Evaluation, name: str) -> str:
    metrics = evaluation.per_class[name]
    if evaluation.task in CLASSIFICATION_TASKS:
        return f"{name}  AP {_number(metrics.ap)}"
    return f"{name}  AP@0.5 {_number(metrics.ap50)}"


def draw_pr_curve(
    recall: Sequence[float], precision: Sequence[float], *, title: str, path: Path
) -> None:
    """A precision-recall curve as a small PNG (axes 0-1, grid at 0.2)."""
    width, height, left, top, right, bottom = 480, 360, 50, 30, 20, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = width - left - right, height - top - bottom

    def point(r: float, p: float) -> tuple[float, float]:
        return left + r * plot_w, top + (1 - p) * plot_h

    for tick in np.linspace(0, 1, 6):
        draw.line([point(tick, 0), point(tick, 1)], fill=(225, 225, 225))
        draw.line([point(0, tick), point(1, tick)], fill=(225, 225, 225))
        draw.text(
            (point(tick, 0)[0] - 8, top + plot_h + 6), f"{tick:.1f}", fill="black"
        )
        draw.text((8, point(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
    draw.rectangle([point(0, 1), point(1, 0)], outline="black")
    pairs = [(r, p) for r, p in zip(recall, precision, strict=True) if p >= 0]
    if len(pairs) > 1:
        draw.line([point(r, p) for r, p in pairs], fill=(30, 90, 200), width=2)
    draw.text((left, 8), title, fill="black")
    draw.text((left + plot_w // 2 - 15, height - 16), "recall", fill="black")
    draw.text((4, top - 22), "precision", fill="black")
    image.save(path, format="PNG")


def render_evaluation_markdown(evaluation: Evaluation) -> str:
    """evaluation.md: the scores per class, then everything not evaluated."""
    e = evaluation
    if e.task in CLASSIFICATION_TASKS:
        lines = _classification_lines(e)
    else:
        lines = _detection_lines(e)
    if e.pr_curves:
        files = curve_files(list(e.pr_curves))
        at = "" if e.task in CLASSIFICATION_TASKS else " (IoU 0.5)"
        lines += [
            "",
            f"Precision-recall curves{at}: "
            + ", ".join(markdown_code(f) for f in files.values()),
        ]
    lines += ["", "## Not evaluated", ""]
    lines += _listed("Truth images matching no labeled image", e.unmatched_truth_images)
    lines += _listed("Labeled images without truth", e.labeled_images_without_truth)
    lines += _listed(
        "Truth images of an image already matched", e.duplicate_truth_images
    )
    what = "images" if e.task in CLASSIFICATION_TASKS else "boxes"
    lines += _listed(
        f"Truth classes matching no class of the labels ({what})",
        [f"{name} ({count})" for name, count in e.unknown_truth_classes.items()],
        paths=False,
    )
    lines += _listed(
        "Classes of the labels the truth has not",
        e.classes_without_truth,
        paths=False,
    )
    if e.task not in CLASSIFICATION_TASKS:
        lines += _listed(
            "Truth images of another size than the labeled one (boxes scaled)",
            e.resized_truth_images,
        )
        lines += [
            f"- Truth boxes clipped to their image: {e.clipped_truth_boxes}",
            "- Truth boxes wholly outside their image (dropped): "
            f"{e.outside_truth_boxes}",
        ]
    return "\n".join([*lines, ""])


def _classification_lines(e: Evaluation) -> list[str]:
    multi = e.task == "classify-multi"
    lines = _heading(e, "Classification labels against human labels")
    lines[-1] += f"; {'multi-label' if multi else 'single-label'}"
    lines += [
        f"- Accuracy ({'every class right' if multi else 'the right class'}): "
        f"{_number(e.accuracy)} over {e.accuracy_images} image(s)",
        "",
        "| Class | Truth | Labels | TP | FP | FN | Precision | Recall | F1 |"
        + (" AP |" if multi else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if multi else ""),
    ]
    return lines + _metric_rows(
        e, lambda m: [m.precision, m.recall, m.f1, *([m.ap] if multi else [])]
    )


def _detection_lines(e: Evaluation) -> list[str]:
    segm = e.segm == "evaluated"
    lines = _heading(e, "Labels against human labels")
    lines += [
        f"- Precision, recall, F1 at IoU {e.iou:g}; AP by COCOeval (bbox"
        f"{', segm' if segm else ''}); segmentation: {markdown_cell(e.segm)}",
        "",
        "| Class | Truth | Labels | TP | FP | FN | Precision | Recall | F1 "
        "| AP@0.5 | AP@[.5:.95] |" + (" AP@0.5 segm | AP segm |" if segm else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if segm else ""),
    ]
    return lines + _metric_rows(
        e,
        lambda m: [
            *(m.precision, m.recall, m.f1, m.ap50, m.ap),
            *((m.ap50_segm, m.ap_segm) if segm else ()),
        ],
    )


def _heading(e: Evaluation, title: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"- Output: {markdown_code(e.out)}",
        f"- Truth: {markdown_code(e.truth)}",
        f"- Thresholds: {markdown_cell(e.thresholds_from)}",
        f"- Images evaluated: {e.images} (matched by content hash "
        f"{e.matched_by['hash']}, path {e.matched_by['path']}, file name "
        f"{e.matched_by['name']})",
    ]


def _metric_rows(e: Evaluation, scores) -> list[str]:
    """A table row per class and one for all: the counts, then ``scores(metrics)``."""
    rows = [*((markdown_cell(n), m) for n, m in e.per_class.items())]
    rows.append(("**all**", e.overall))
    lines = []
    for name, m in rows:
        cells = [m.truth, m.labels, m.tp, m.fp, m.fn, *map(_number, scores(m))]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _listed(title: str, names: Sequence[str], *, paths: bool = True) -> list[str]:
    """Paths as code spans; class names as escaped text."""
    if not names:
        return [f"- {title}: none"]
    quote = markdown_code if paths else markdown_cell
    shown = ", ".join(quote(n) for n in names[:LISTED])
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return [f"- {title}: {len(names)}: {shown}{more}"]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@task(name="write-evaluation", cache_policy=NO_CACHE)
def write_evaluation_task(out: str, evaluation: Evaluation) -> list[str]:
    """``write_evaluation``, and evaluation.md as an artifact on the flow run."""
    written = write_evaluation(out, evaluation)
    create_markdown_artifact(
        markdown=render_evaluation_markdown(evaluation),
        key="autolabel-evaluation",
        description="Labels against human labels: P/R/F1 and AP per class",
    )
    return [str(path) for path in written]
